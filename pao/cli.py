"""The `pao` command.

Process commands (`pao api`, `pao scheduler`, `pao worker`) are found
through the `pao.processes` entry points, so this shared package never imports
the process packages.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

from pao import cli_assets, cli_client, logs, tokens
from pao.db import connect
from pao.domain.agents import create_agent, ensure_admin_token
from pao.embedded import database_url, ensure_embedded
from pao.errors import PaoError
from pao.migrate import ensure_migrated, migrate
from pao.models import SCOPES
from pao.settings import Settings

ProcessMain = Callable[[Settings], int]


def _processes() -> dict[str, EntryPoint]:
    """Installed process commands, loaded only when run (so `--help` stays fast)."""
    return {ep.name: ep for ep in entry_points(group="pao.processes")}


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    url = database_url(settings.database_url, settings.data_dir)
    applied = asyncio.run(migrate(url))
    if applied:
        for m in applied:
            print(f"applied {m.name}")
    else:
        print("database is up to date")
    return 0


async def _create_agent(url: str, name: str, scopes: list[str]) -> str:
    conn = await connect(url)
    try:
        await ensure_migrated(conn)
        async with conn.transaction():
            new = await create_agent(conn, actor=None, name=name, scopes=scopes)
        return new.token
    finally:
        await conn.close()


def _cmd_agents_create(settings: Settings, args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()] if args.scopes else []
    if args.admin:
        scopes.append("admin")
    if not scopes:
        print("give --scopes (comma-separated) or --admin", file=sys.stderr)
        return 2
    url = database_url(settings.database_url, settings.data_dir)
    token = asyncio.run(_create_agent(url, args.name, scopes))
    print(token)
    print("store this token now: it is shown only once", file=sys.stderr)
    return 0


def _cmd_agents_token(settings: Settings, args: argparse.Namespace) -> int:
    print(tokens.new_token())
    return 0


async def _bootstrap_admin(url: str, token: str) -> None:
    conn = await connect(url)
    try:
        async with conn.transaction():
            await ensure_admin_token(conn, token)
    finally:
        await conn.close()


def _dev_admin_token(settings: Settings) -> str:
    """PAO_ADMIN_TOKEN, or one kept in the data directory so it survives restarts."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = tokens.new_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    """Everything on the embedded database, each process as a child of this one."""
    url = settings.database_url or ensure_embedded(settings.data_dir)
    asyncio.run(migrate(url))
    token = _dev_admin_token(settings)
    asyncio.run(_bootstrap_admin(url, token))
    env = {**os.environ, "DATABASE_URL": url, "PAO_ADMIN_TOKEN": token}
    names = [name for name in ("api", "scheduler", "worker") if name in _processes()]
    # Scheduler and worker each serve metrics; on one machine they need a port each.
    port = settings.metrics_port
    metrics_ports = {"scheduler": port, "worker": port + 1 if port else 0}
    # Metrics on the address the settings give (loopback unless PAO_METRICS_HOST is set),
    # stated explicitly so no child falls back to a default of its own.
    env["PAO_METRICS_HOST"] = settings.metrics_host
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "pao", name],
            env={**env, "PAO_METRICS_PORT": str(metrics_ports.get(name, port))},
            preexec_fn=_die_with_parent,
        )
        for name in names
    ]
    base = f"http://{settings.host}:{settings.port}"
    others = f" (scheduler :{port}, worker :{port + 1})" if port else ""
    print(
        f"\npao dev is running ({', '.join(names)}) on the embedded database\n"
        f"  API:         {base}\n"
        f"  docs:        {base}/docs\n"
        f"  dashboard:   {base}/ui/ (paste the admin token)\n"
        f"  metrics:     {base}/metrics{others}\n"
        f"  admin token: {token}\n"
        f"  try:         curl -H 'Authorization: Bearer {token}' {base}/tasks\n"
        f"Ctrl-C stops everything.\n",
        flush=True,
    )
    return _supervise(children)


def _die_with_parent() -> None:
    """In a child of `pao dev`: get SIGTERM if the parent dies, so nothing is orphaned (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait for the children; on a signal or a child's exit, stop them all."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while children:
        for child in list(children):
            try:
                rc = child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            children.remove(child)
            if not stopping:
                code = rc or 1
                stop(signal.SIGTERM, None)
    return code


def _make_parser(processes: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pao",
        description="Personal Agent Orchestrator: a Postgres-native scheduler for agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "api": "serve the HTTP API (same as python run_api.py)",
        "scheduler": "materialise due work, rescue expired leases, prune history",
        "worker": "claim due work and run pipelines",
    }
    for name in processes:
        sub.add_parser(name, help=helps.get(name, f"run the {name} process"))
    sub.add_parser("dev", help="run everything on the embedded database, migrated")
    sub.add_parser("migrate", help="apply pending database migrations")
    agents = sub.add_parser("agents", help="manage agents and tokens")
    agents_sub = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    create = agents_sub.add_parser("create", help="create an agent and print its token once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", default="", help=f"comma-separated, from: {', '.join(SCOPES)}")
    create.add_argument("--admin", action="store_true", help="add the admin scope")
    agents_sub.add_parser("token", help="print a new random token (e.g. for PAO_ADMIN_TOKEN)")
    cli_client.add_agent_commands(agents_sub)
    cli_client.add_commands(sub)
    cli_assets.add_commands(sub)
    cli_client.add_mcp_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    processes = _processes()
    args = _make_parser(sorted(processes)).parse_args(argv)
    # From the raw environment: a bad PAO_LOG_FORMAT is reported by the settings below.
    fmt = "json" if os.environ.get("PAO_LOG_FORMAT", "").strip().lower() == "json" else "text"
    logs.configure(os.environ.get("PAO_LOG_LEVEL", "INFO"), fmt)
    # pgserver narrates every pg_ctl call at INFO; its warnings are what matter.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # APScheduler logs every run of every job at INFO, and a tick skipped under load at WARNING.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # httpx logs every request at INFO: noise around a command's own output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Commands against a running API need no database and no settings of their own.
    if getattr(args, "remote", None) is not None:
        return cli_client.run(args)
    if getattr(args, "mcp", False):
        from pao import mcp_server  # the MCP SDK and uvicorn cost every other command 0.4 s

        return mcp_server.run(args)
    try:
        settings = Settings.from_env()
        if args.command in processes:
            run: ProcessMain = processes[args.command].load()
            return run(settings)
        commands: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
            "migrate": _cmd_migrate,
            "dev": _cmd_dev,
        }
        if args.command == "agents":
            agent_commands = {"create": _cmd_agents_create, "token": _cmd_agents_token}
            return agent_commands[args.agents_command](settings, args)
        return commands[args.command](settings, args)
    except PaoError as exc:
        print(f"pao: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
