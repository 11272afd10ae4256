"""`pao tasks`, `pao runs`, `pao events`: the common operations against a running API.

They go through `pao.client`, so they need only the API's address
(`PAO_API_URL` or `--api-url`) and a token (`PAO_TOKEN` or `--token`), never the
database. Output is a table for people, or the API's JSON with `--json` for
scripts. A refused request exits with status 1 and prints the problem's title,
detail and field errors on stderr; bad command-line input exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pao.client import (
    ApiProblem,
    ApiUnreachable,
    InvalidId,
    Occurrence,
    PaoClient,
    PermanentError,
    RemoteWorker,
    Run,
    StepContext,
    Task,
    api_url_from_env,
)
from pao.vocabulary import BackoffStrategy, MisfirePolicy, RunStatus, ScheduleKind, TaskStatus

Handler = Callable[[PaoClient, argparse.Namespace], Awaitable[tuple[Any, str]]]
"""A command: the API's JSON (printed with --json) and its rendering for people."""

SCHEDULE_KINDS: tuple[str, ...] = tuple(ScheduleKind)
TASK_STATUSES: tuple[str, ...] = tuple(TaskStatus)
RUN_STATUSES: tuple[str, ...] = tuple(RunStatus)
MCP_HTTP_PORT = 8765
"""Where `pao mcp --http` listens unless told otherwise."""
MAX_PAGES = 1000
"""`--all` stops after this many pages, so a runaway listing still ends."""


class UsageError(Exception):
    """Command-line input that cannot be sent at all (exit status 2)."""


# Rendering


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> str:
    """Columns padded to their widest cell; `empty` when there are no rows."""
    if not rows:
        return empty
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


def when(value: str | None) -> str:
    """An API time in UTC, to the second; `-` for none."""
    if not value:
        return "-"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def local(value: str | None) -> str:
    """A wall time with its offset, to the second."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).isoformat(sep=" ", timespec="seconds")
    except ValueError:
        return value


def short(value: Any, width: int = 60) -> str:
    """One line of at most `width` characters: text as is, anything else as compact JSON."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def size(value: int) -> str:
    """Bytes for people: `512 B`, `1.5 KiB`, `20.0 MiB`, `3.2 GiB`."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def millis(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _task_rows(tasks: Sequence[Task]) -> list[list[str]]:
    return [
        [
            t["id"],
            t["status"],
            t["schedule_kind"],
            short(t["schedule_expr"], 30),
            when(t["next_run_at"]),
            short(t["title"], 40),
        ]
        for t in tasks
    ]


TASK_HEADERS = ("ID", "STATUS", "KIND", "SCHEDULE", "NEXT RUN (UTC)", "TITLE")


def _task_text(task: Task) -> str:
    steps = task["payload"].get("pipeline")
    pairs = [
        ("id", task["id"]),
        ("title", task["title"]),
        ("status", task["status"]),
        ("schedule", f"{task['schedule_kind']} {task['schedule_expr']} ({task['timezone']})"),
        ("next run", when(task["next_run_at"])),
        ("priority", str(task["priority"])),
        ("retries", f"{task['max_retries']} ({task['backoff_strategy']})"),
        ("created by", task["created_by"]),
        ("created", when(task["created_at"])),
        ("updated", when(task["updated_at"])),
    ]
    if task["description"]:
        pairs.insert(2, ("description", short(task["description"], 80)))
    if isinstance(steps, list):
        uses = [str(s.get("uses", "?")) for s in steps if isinstance(s, dict)]
        pairs.append(("pipeline", " → ".join(uses) or "(empty)"))
    return fields(pairs)


def _run_rows(runs: Sequence[Run]) -> list[list[str]]:
    return [
        [
            r["id"],
            r["task_id"],
            r["status"],
            str(r["attempt"]),
            when(r["scheduled_for"]),
            millis(r["duration_ms"]),
            short(r["error"] or "", 40),
        ]
        for r in runs
    ]


RUN_HEADERS = ("ID", "TASK", "STATUS", "ATTEMPT", "SCHEDULED FOR (UTC)", "DURATION", "ERROR")


def _run_text(run: Run) -> str:
    pairs = [
        ("id", run["id"]),
        ("task", run["task_id"]),
        ("status", run["status"]),
        ("attempt", str(run["attempt"])),
        ("scheduled for", when(run["scheduled_for"])),
        ("started", when(run["started_at"])),
        ("finished", when(run["finished_at"])),
        ("duration", millis(run["duration_ms"])),
        ("worker", run["worker_id"] or "-"),
        ("cost", run.get("cost", "0")),
    ]
    if run["error"]:
        pairs.append(("error", run["error"]))
    steps = [
        [
            str(s.get("id", "?")),
            str(s.get("uses", "?")),
            str(s.get("status", "?")),
            millis(s.get("duration_ms")),
            short(s.get("error") or s.get("detail") or s.get("output", ""), 60),
        ]
        for s in run["steps"]
    ]
    return (
        fields(pairs)
        + "\n\n"
        + table(
            ("STEP", "TOOL", "STATUS", "DURATION", "OUTPUT / ERROR"), steps, empty="(no steps yet)"
        )
    )


def _occurrence_rows(items: Sequence[Occurrence], *, past: bool) -> list[list[str]]:
    rows = []
    for o in items:
        row = [when(o.get("at")), local(o.get("local"))]
        if past:
            row += [
                str(o.get("decision") or "-"),
                str(o.get("run_status") or "-"),
                short(o.get("detail") or "", 50),
            ]
        rows.append(row)
    return rows


def _occurrences_text(items: Sequence[Occurrence], *, past: bool = False) -> str:
    headers = ["AT (UTC)", "LOCAL"] + (["DECISION", "RUN", "DETAIL"] if past else [])
    return table(headers, _occurrence_rows(items, past=past), empty="(no occurrences)")


def _more(next_cursor: str | None) -> str:
    return f"\n(more: --cursor {next_cursor}, or --all)" if next_cursor else ""


# Input


def json_arg(value: str, *, flag: str) -> Any:
    """JSON given inline, as `@path`, or `-` for stdin."""
    try:
        if value == "-":
            text = sys.stdin.read()
        elif value.startswith("@"):
            text = Path(value[1:]).read_text()
        else:
            text = value
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {value[1:]!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{flag} is not valid JSON ({exc}); quote it for the shell") from None


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration(value: str) -> int:
    """`90`, `90s`, `15m`, `2h` or `1d` as seconds."""
    match = _DURATION.match(value.lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration; write seconds or e.g. 90s, 15m, 2h, 1d"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


def _schedule(args: argparse.Namespace) -> dict[str, str]:
    for kind in SCHEDULE_KINDS:
        expr = getattr(args, kind, None)
        if expr is not None:
            return {"schedule_kind": kind, "schedule_expr": expr}
    return {}


async def _pages(
    fetch: Callable[[str | None], Awaitable[Any]], args: argparse.Namespace
) -> tuple[list[Any], str | None]:
    """One page, or with `--all` every page from `--cursor` on."""
    items: list[Any] = []
    cursor: str | None = args.cursor
    for _ in range(MAX_PAGES):
        page = await fetch(cursor)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not args.all or cursor is None:
            break
    return items, cursor


# Commands


async def tasks_list(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    async def fetch(cursor: str | None) -> Any:
        return await client.list_tasks(
            status=args.status,
            created_by=args.created_by,
            schedule_kind=args.kind,
            limit=args.limit,
            cursor=cursor,
        )

    items, cursor = await _pages(fetch, args)
    text = table(TASK_HEADERS, _task_rows(items), empty="(no tasks)") + _more(cursor)
    return {"items": items, "next_cursor": cursor}, text


async def tasks_get(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    task = await client.get_task(args.id)
    return task, _task_text(task)


def _task_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.file is not None:
        loaded = json_arg("-" if args.file == "-" else f"@{args.file}", flag="--file")
        if not isinstance(loaded, dict):
            raise UsageError("--file must hold a JSON object with the task's fields")
        body.update(loaded)
    if args.payload is not None:
        payload = json_arg(args.payload, flag="--payload")
        if not isinstance(payload, dict):
            raise UsageError('--payload must be a JSON object, e.g. {"pipeline": [...]}')
        body["payload"] = payload
    flags = {
        "title": args.title,
        "description": args.description,
        "timezone": args.timezone,
        "priority": args.priority,
        "max_retries": args.max_retries,
        "backoff_strategy": args.backoff,
        "dedupe_key": args.dedupe_key,
        "dedupe_window_seconds": args.dedupe_window,
        "concurrency_key": args.concurrency_key,
        "concurrency_limit": args.concurrency_limit,
        "misfire_policy": args.misfire_policy,
        "misfire_grace_seconds": args.misfire_grace,
        "created_by": args.created_by,
    }
    body.update({k: v for k, v in flags.items() if v is not None})
    body.update(_schedule(args))
    return body


async def tasks_create(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    task = await client.create_task(_task_body(args), idempotency_key=args.idempotency_key)
    return task, f"created task {task['id']}\n" + _task_text(task)


async def tasks_preview(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    body: dict[str, Any] = {**_schedule(args), "count": args.count}
    if args.timezone:
        body["timezone"] = args.timezone
    result = await client.preview(body)
    return result, _occurrences_text(result["items"])


async def tasks_occurrences(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    result = await client.occurrences(args.id, count=args.count, from_=args.from_, past=args.past)
    return result, _occurrences_text(result["items"], past=args.past)


def _task_action(
    name: str, call: Callable[[PaoClient, str], Awaitable[Task]]
) -> Callable[[PaoClient, argparse.Namespace], Awaitable[tuple[Any, str]]]:
    async def handler(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
        task = await call(client, args.id)
        return task, (
            f"{name} task {task['id']}: status {task['status']}, "
            f"next run {when(task['next_run_at'])}"
        )

    return handler


async def tasks_run(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    run = await client.run_now(args.id)
    return (
        run,
        f"queued run {run['id']} of task {run['task_id']}\nsee it with: pao runs get {run['id']}",
    )


async def tasks_snooze(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    task = await client.snooze(args.id, args.duration)
    return task, f"snoozed task {task['id']}: next run {when(task['next_run_at'])}"


async def runs_list(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    async def fetch(cursor: str | None) -> Any:
        return await client.list_runs(
            task_id=args.task, status=args.status, limit=args.limit, cursor=cursor
        )

    items, cursor = await _pages(fetch, args)
    text = table(RUN_HEADERS, _run_rows(items), empty="(no runs)") + _more(cursor)
    return {"items": items, "next_cursor": cursor}, text


async def runs_get(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    run = await client.get_run(args.id)
    return run, _run_text(run)


async def runs_logs(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    async def fetch(cursor: str | None) -> Any:
        return await client.run_logs(args.id, limit=args.limit, cursor=cursor)

    items, cursor = await _pages(fetch, args)
    lines = [
        f"{when(line['at'])}  {line['level'].upper():7} "
        f"{(line['step_id'] or '-'):12} {line['message']}"
        for line in items
    ]
    text = ("\n".join(lines) if lines else "(no log lines)") + _more(cursor)
    return {"items": items, "next_cursor": cursor}, text


async def runs_cancel(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    run = await client.cancel_run(args.id)
    return run, f"run {run['id']}: {run['status']}"


async def events_publish(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    payload = json_arg(args.payload, flag="--payload") if args.payload is not None else {}
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object")
    given: str | None = args.audience
    audience: str | list[str] | None = given
    if given is not None and given != "*":
        audience = [part.strip() for part in given.split(",") if part.strip()]
    accepted = await client.publish_event(
        args.type, payload, idempotency_key=args.idempotency_key, audience=audience
    )
    return accepted, (
        f"published event {accepted['id']} ({accepted['type']}): "
        f"{accepted['queued']} run(s) of your tasks queued"
    )


async def task_types_list(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    async def fetch(cursor: str | None) -> Any:
        return await client.list_task_types(
            include_inactive=args.inactive, limit=args.limit, cursor=cursor
        )

    items, cursor = await _pages(fetch, args)
    rows = [
        [
            t["name"],
            "active" if t["is_active"] else "inactive",
            f"{t['lease_seconds']} s",
            t["cost_per_call"] or "-",
            short(t["description"], 50),
        ]
        for t in items
    ]
    headers = ("NAME", "STATE", "LEASE", "COST", "DESCRIPTION")
    text = table(headers, rows, empty="(no task types)") + _more(cursor)
    return {"items": items, "next_cursor": cursor}, text


async def task_types_get(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    found = await client.get_task_type(args.name)
    pairs = [
        ("name", found["name"]),
        ("state", "active" if found["is_active"] else "inactive"),
        ("description", short(found["description"] or "-", 80)),
        ("lease", f"{found['lease_seconds']} s"),
        ("cost per call", found["cost_per_call"] or "-"),
        ("parameters", short(found["parameters_schema"], 80)),
        ("output", short(found["output_schema"], 80) if found["output_schema"] else "any"),
        ("version", str(found["version"])),
        ("updated", when(found["updated_at"])),
    ]
    return found, fields(pairs)


async def task_types_create(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    body = json_arg(args.file, flag="--file") if args.file is not None else {}
    if not isinstance(body, dict):
        raise UsageError("--file must hold a JSON object: the task type")
    if args.name is not None:
        body["name"] = args.name
    if args.description is not None:
        body["description"] = args.description
    if args.parameters_schema is not None:
        body["parameters_schema"] = json_arg(args.parameters_schema, flag="--parameters-schema")
    if args.output_schema is not None:
        body["output_schema"] = json_arg(args.output_schema, flag="--output-schema")
    if args.lease_seconds is not None:
        body["lease_seconds"] = args.lease_seconds
    if "name" not in body or "parameters_schema" not in body:
        raise UsageError("give the type's name and --parameters-schema (or --file with both)")
    created = await client.create_task_type(body)
    return created, f"created task type {created['name']}"


DEFINITION_FIELDS = (
    "description",
    "parameters_schema",
    "output_schema",
    "metadata",
    "lease_seconds",
    "cost_per_call",
    "is_active",
)
"""What PUT /task-types/{name} replaces: all of it, so `update` starts from the current."""


def task_type_update_body(current: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The type's whole definition for PUT: the current one (or --file), with the options
    given on top; what is not mentioned stays as it is."""
    if args.file is not None:
        given = json_arg(args.file, flag="--file")
        if not isinstance(given, dict):
            raise UsageError("--file must hold a JSON object: the task type's definition")
        body = {k: v for k, v in given.items() if k != "name"}
    else:
        body = {k: current[k] for k in DEFINITION_FIELDS if k in current}
    if args.description is not None:
        body["description"] = args.description
    if args.parameters_schema is not None:
        body["parameters_schema"] = json_arg(args.parameters_schema, flag="--parameters-schema")
    if args.output_schema is not None:
        body["output_schema"] = json_arg(args.output_schema, flag="--output-schema")
    if args.lease_seconds is not None:
        body["lease_seconds"] = args.lease_seconds
    if args.active is not None:
        body["is_active"] = args.active
    return body


async def task_types_update(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    current: Mapping[str, Any] = (
        {} if args.file is not None else await client.get_task_type(args.name)
    )
    updated = await client.update_task_type(args.name, task_type_update_body(current, args))
    state = "active" if updated["is_active"] else "inactive"
    return updated, f"updated task type {updated['name']} (version {updated['version']}, {state})"


async def task_types_delete(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    await client.delete_task_type(args.name)
    return {"name": args.name, "is_active": False}, f"task type {args.name}: inactive"


EX_DATAERR = 65
"""A `pao claims work` command exiting with this failed for good (retrying cannot help)."""
_SECRET_ENV = ("PAO_TOKEN", "PAO_ADMIN_TOKEN")


class CommandFailed(Exception):
    """A `pao claims work` command exited non-zero: the step fails, retryable."""


def command_handler(argv: Sequence[str]) -> Callable[[StepContext], Awaitable[dict[str, Any]]]:
    """A RemoteWorker handler that runs `argv` for each step: the step's parameters as JSON
    on stdin; PAO_CLAIM_ID, PAO_RUN_ID, PAO_STEP_ID, PAO_ATTEMPT and PAO_IDEMPOTENCY_KEY in
    its environment (pao tokens are not passed on). Exit 0 with a JSON object on stdout:
    the step's output. Exit 65 (EX_DATAERR): failed for good; any other status: failed,
    retryable. A lost claim or a stop terminates the command."""

    async def handle(ctx: StepContext) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
        env.update(
            PAO_CLAIM_ID=ctx.claim_id,
            PAO_RUN_ID=ctx.run_id,
            PAO_STEP_ID=ctx.step_id,
            PAO_ATTEMPT=str(ctx.attempt),
            PAO_IDEMPOTENCY_KEY=ctx.idempotency_key,
        )
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await proc.communicate(json.dumps(ctx.parameters).encode())
        except asyncio.CancelledError:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-2000:]
            message = f"{argv[0]} exited with status {proc.returncode}: {tail or '(no stderr)'}"
            if proc.returncode == EX_DATAERR:
                raise PermanentError(message)
            raise CommandFailed(message)
        try:
            output = json.loads(out or b"{}")
        except ValueError:
            output = None
        if not isinstance(output, dict):
            raise PermanentError(
                f"{argv[0]} exited 0 but did not print a JSON object on stdout: "
                f"{out.decode(errors='replace')[:200]!r}"
            )
        return output

    return handle


async def claims_work(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("give the command to run for each step after --, e.g. -- ./encode.sh")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    worker = RemoteWorker(
        client,
        args.type,
        command_handler(command),
        concurrency=args.concurrency,
        wait_seconds=20,
        grace_seconds=args.grace,
    )
    print(f"pao: claiming steps of {args.type}; SIGTERM or Ctrl-C stops", file=sys.stderr)
    await worker.run(handle_signals=True)
    s = worker.stats
    text = (
        f"stopped: {s.completed} completed, {s.failed} failed, {s.released} handed back, "
        f"{s.lost} lost"
    )
    return vars(s), text


# The parser


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--api-url",
        default=None,
        help="the API's base URL (default: PAO_API_URL, else http://127.0.0.1:8080)",
    )
    group.add_argument("--token", default=None, help="bearer token (default: PAO_TOKEN)")
    group.add_argument(
        "--json", action="store_true", help="print the API's JSON instead of a table"
    )
    return common


def _schedule_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--cron", metavar="EXPR", help="five fields, e.g. '30 8 * * 1-5'")
    group.add_argument("--rrule", metavar="RULE", help="RFC 5545, e.g. 'FREQ=DAILY;BYHOUR=8'")
    group.add_argument("--once", metavar="WHEN", help="ISO 8601, e.g. 2026-12-01T09:00")
    group.add_argument("--event", metavar="PATTERN", help="event type or prefix*, e.g. github.*")
    group.add_argument(
        "--condition", metavar="CRON", help="how often to check the pipeline's first step"
    )
    parser.add_argument("--timezone", help="IANA zone, e.g. Europe/Chisinau (default: server's)")


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="items per page (1-100, default 20)")
    parser.add_argument("--cursor", help="next_cursor of an earlier page")
    parser.add_argument("--all", action="store_true", help="follow next_cursor to the end")


def _leaf(
    sub: Any, name: str, handler: Handler, help: str, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, parents=[common]
    )
    parser.set_defaults(remote=handler)
    return parser


def _or_none(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    """An option's value, or None for `none` (the field is cleared)."""

    def parse(raw: str) -> Any:
        if raw.strip().lower() in ("none", "null"):
            return None
        try:
            return cast(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number (or none)") from None

    return parse


async def agents_limit(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    body = {
        name: getattr(args, name)
        for name in ("budget_per_day", "budget_per_month", "max_runs_per_hour", "timezone")
        if getattr(args, name) is not _UNSET
    }
    if not body:
        raise UsageError(
            "give at least one of --budget-per-day, --budget-per-month, --max-runs-per-hour, "
            "--timezone"
        )
    agent = await client.update_agent(args.id, body)
    shown = [(name.replace("_", " "), _shown(agent.get(name))) for name in body]
    return agent, fields([("agent", f"{agent['name']} ({agent['id']})"), *shown])


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


async def usage(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    found = await client.usage(args.id)
    rows = [
        [
            label,
            str(w["runs"]),
            w["cost"],
            _shown(w["budget"]),
            w["reserved"],
            _shown(w["remaining"]),
            size(w["asset_bytes_added"]),
            when(w["ends_at"]),
        ]
        for label, w in (("today", found["today"]), ("this month", found["this_month"]))
    ]
    hour = found["this_hour"]
    rate = (
        "no run rate limit"
        if hour["max_runs"] is None
        else f"runs this hour: {hour['runs_started']} of {hour['max_runs']} "
        f"(until {when(hour['ends_at'])})"
    )
    text = table(
        ["WINDOW", "RUNS", "COST", "BUDGET", "RESERVED", "REMAINING", "NEW ASSETS", "RESETS"],
        rows,
        empty="",
    )
    kept = (
        f"assets kept: {size(found['asset_bytes'])} of {size(found['asset_quota_bytes'])} "
        f"({found['asset_bytes']} of {found['asset_quota_bytes']} bytes)"
    )
    return found, f"agent {found['agent_id']} ({found['timezone']})\n{text}\n{rate}\n{kept}"


_UNSET = object()


def add_agent_commands(agents: Any) -> None:
    """Add `pao agents limit` (an admin sets an agent's budgets over the API)."""
    common = _connection_options()
    p = _leaf(
        agents,
        "limit",
        agents_limit,
        "set an agent's budgets, run rate or zone on a running API (admin); 'none' clears one",
        common,
    )
    p.add_argument("id", metavar="AGENT_ID")
    money = _or_none(float)
    p.add_argument("--budget-per-day", type=money, default=_UNSET, metavar="AMOUNT")
    p.add_argument("--budget-per-month", type=money, default=_UNSET, metavar="AMOUNT")
    p.add_argument("--max-runs-per-hour", type=_or_none(int), default=_UNSET, metavar="N")
    p.add_argument(
        "--timezone",
        type=_or_none(str),
        default=_UNSET,
        help="IANA zone its days and months are counted in",
    )


def add_commands(sub: Any) -> None:
    """Add `tasks`, `runs`, `task-types` and `events` to the `pao` parser's subcommands
    (`assets` are in pao.cli_assets)."""
    common = _connection_options()

    tasks = sub.add_parser("tasks", help="list, create and steer tasks on a running API")
    ts = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    p = _leaf(ts, "list", tasks_list, "tasks, newest first", common)
    p.add_argument("--status", choices=TASK_STATUSES)
    p.add_argument("--kind", choices=SCHEDULE_KINDS, help="schedule kind")
    p.add_argument("--created-by", metavar="AGENT_ID")
    _page_options(p)
    p = _leaf(ts, "get", tasks_get, "one task", common)
    p.add_argument("id", metavar="TASK_ID")

    p = _leaf(ts, "create", tasks_create, "create a task", common)
    p.add_argument("--title")
    _schedule_options(p, required=False)
    p.add_argument("--description")
    p.add_argument(
        "--payload", metavar="JSON", help='{"pipeline": [...]} inline, @file, or - for stdin'
    )
    p.add_argument(
        "--file", metavar="PATH", help="a JSON file (- for stdin) with the task; flags override it"
    )
    p.add_argument("--priority", type=int, help="1 (first) to 9, default 5")
    p.add_argument("--max-retries", type=int)
    p.add_argument("--backoff", choices=tuple(BackoffStrategy))
    p.add_argument("--dedupe-key")
    p.add_argument("--dedupe-window", type=duration, metavar="DURATION")
    p.add_argument("--concurrency-key")
    p.add_argument("--concurrency-limit", type=int)
    p.add_argument("--misfire-policy", choices=tuple(MisfirePolicy))
    p.add_argument("--misfire-grace", type=duration, metavar="DURATION")
    p.add_argument("--created-by", metavar="AGENT_ID", help="the owner (admins only)")
    p.add_argument("--idempotency-key", help="retrying with the same key creates one task")

    p = _leaf(ts, "preview", tasks_preview, "next fire times of a schedule, nothing stored", common)
    _schedule_options(p, required=True)
    p.add_argument("--count", type=int, default=5, help="how many (1-100, default 5)")

    p = _leaf(
        ts, "occurrences", tasks_occurrences, "a task's coming (or --past) fire times", common
    )
    p.add_argument("id", metavar="TASK_ID")
    p.add_argument("--count", type=int, help="how many (1-100, default 10)")
    p.add_argument("--from", dest="from_", metavar="WHEN", help="ISO 8601 with offset")
    p.add_argument("--past", action="store_true", help="past occurrences and what became of them")

    p = _leaf(ts, "run", tasks_run, "run a task once now; the schedule is untouched", common)
    p.add_argument("id", metavar="TASK_ID")
    for name, verb, call, help in (
        ("pause", "paused", PaoClient.pause, "stop a task firing until resumed"),
        ("resume", "resumed", PaoClient.resume, "fire again from now; missed times not replayed"),
        ("cancel", "cancelled", PaoClient.cancel, "cancel a task for good"),
    ):
        p = _leaf(ts, name, _task_action(verb, call), help, common)
        p.add_argument("id", metavar="TASK_ID")
    p = _leaf(ts, "snooze", tasks_snooze, "delay a task's next execution", common)
    p.add_argument("id", metavar="TASK_ID")
    p.add_argument("duration", type=duration, metavar="DURATION", help="e.g. 90, 15m, 2h, 1d")

    p = _leaf(
        sub,
        "usage",
        usage,
        "runs, cost and new asset bytes today and this month, budgets and what remains, and "
        "the asset bytes kept (this agent's, or an admin's view of another's)",
        common,
    )
    p.add_argument("id", metavar="AGENT_ID", nargs="?", help="default: the token's own agent")

    runs = sub.add_parser("runs", help="read and cancel runs on a running API")
    rs = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    p = _leaf(rs, "list", runs_list, "runs, newest first", common)
    p.add_argument("--task", metavar="TASK_ID")
    p.add_argument("--status", choices=RUN_STATUSES)
    _page_options(p)
    p = _leaf(rs, "get", runs_get, "one run with its steps", common)
    p.add_argument("id", metavar="RUN_ID")
    p = _leaf(rs, "logs", runs_logs, "a run's log lines, oldest first", common)
    p.add_argument("id", metavar="RUN_ID")
    _page_options(p)
    p = _leaf(rs, "cancel", runs_cancel, "stop a run", common)
    p.add_argument("id", metavar="RUN_ID")

    types = sub.add_parser(
        "task-types", help="task types: steps done by agents that claim them (admins declare)"
    )
    tt = types.add_subparsers(dest="task_types_command", required=True, metavar="ACTION")
    p = _leaf(tt, "list", task_types_list, "task types by name", common)
    p.add_argument("--inactive", action="store_true", help="deleted (inactive) ones too")
    _page_options(p)
    p = _leaf(tt, "get", task_types_get, "one task type", common)
    p.add_argument("name", metavar="NAME")
    p = _leaf(tt, "create", task_types_create, "declare a task type (admin)", common)
    p.add_argument("name", metavar="NAME", nargs="?", help="e.g. media.transcode")
    p.add_argument(
        "--parameters-schema", metavar="JSON", help="JSON Schema of its input, inline or @file"
    )
    p.add_argument("--output-schema", metavar="JSON", help="JSON Schema of its output")
    p.add_argument("--description")
    p.add_argument("--lease-seconds", type=int, help="1-3600, default 60")
    p.add_argument("--file", metavar="PATH", help="the whole type as JSON (@path or -)")
    p = _leaf(tt, "update", task_types_update, "change a task type (admin)", common)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--parameters-schema", metavar="JSON", help="new JSON Schema of its input")
    p.add_argument("--output-schema", metavar="JSON", help="new JSON Schema of its output")
    p.add_argument("--description")
    p.add_argument("--lease-seconds", type=int, help="1-3600")
    p.add_argument(
        "--active",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="make it active again (--active) or inactive (--no-active)",
    )
    p.add_argument(
        "--file", metavar="PATH", help="the whole definition as JSON (@path or -), replacing it"
    )
    p = _leaf(tt, "delete", task_types_delete, "make a task type inactive (admin)", common)
    p.add_argument("name", metavar="NAME")

    claims = sub.add_parser("claims", help="do the steps of a task type (work:claim)")
    cs = claims.add_subparsers(dest="claims_command", required=True, metavar="ACTION")
    p = _leaf(
        cs,
        "work",
        claims_work,
        "claim steps of a task type and run a command for each: its parameters as JSON on "
        "stdin, its output a JSON object on stdout (exit 65: failed for good; other "
        "non-zero: failed, retryable)",
        common,
    )
    p.add_argument(
        "--type", required=True, metavar="NAME", help="the task type, e.g. media.transcode"
    )
    p.add_argument("--concurrency", type=int, default=1, help="steps at once (1)")
    p.add_argument(
        "--grace", type=float, default=10.0, help="seconds to finish steps on SIGTERM (10)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")

    events = sub.add_parser("events", help="publish events to a running API")
    es = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    p = _leaf(es, "publish", events_publish, "publish an event; matching event tasks fire", common)
    p.add_argument("type", metavar="TYPE", help="e.g. github.push")
    p.add_argument("--payload", metavar="JSON", help="a JSON object inline, @file, or -")
    p.add_argument("--idempotency-key", help="retrying with the same key publishes once")
    p.add_argument(
        "--audience",
        metavar="'*'|ID,...",
        help="reach other agents' event tasks too: '*' for every agent's, or agent ids "
        "(needs the events:broadcast scope); without it, only your own tasks fire",
    )


def add_mcp_command(sub: Any) -> None:
    """Add `pao mcp`; its server (`pao.mcp_server`) is imported only when it runs."""
    p = sub.add_parser(
        "mcp",
        help="serve the orchestrator as MCP tools (stdio, or --http)",
        description="Serve pao's tasks, runs and events as MCP tools. Over stdio the token "
        "comes from PAO_TOKEN (or --token); with --http each request's own bearer token is "
        "used, so several agents can share one server.",
    )
    p.add_argument(
        "--api-url",
        default=None,
        help="the API's base URL (default: PAO_API_URL, else http://127.0.0.1:8080)",
    )
    p.add_argument("--token", default=None, help="stdio only: bearer token (default: PAO_TOKEN)")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="--http: address (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=MCP_HTTP_PORT,
        help=f"--http: port (default {MCP_HTTP_PORT}); the endpoint is /mcp",
    )
    p.set_defaults(mcp=True)


def run(args: argparse.Namespace) -> int:
    """Run the command `add_commands` set on `args`; the process exit status."""
    handler: Handler = args.remote
    token = args.token or os.environ.get("PAO_TOKEN")
    if not token:
        print(
            "pao: no token: set PAO_TOKEN or pass --token (an admin makes one with "
            "`pao agents create --name NAME --scopes tasks:read,tasks:write,runs:read`)",
            file=sys.stderr,
        )
        return 2
    base_url = (args.api_url or api_url_from_env()).rstrip("/")

    async def go() -> tuple[Any, str]:
        async with PaoClient.connect(base_url, token) as client:
            return await handler(client, args)

    try:
        data, text = asyncio.run(go())
    except (UsageError, InvalidId) as exc:
        print(f"pao: {exc}", file=sys.stderr)
        return 2
    except ApiProblem as problem:
        for line in problem.lines():
            print(f"pao: {line}" if not line.startswith(" ") else line, file=sys.stderr)
        if args.json:
            print(json.dumps(_problem_json(problem), indent=2))
        return 1
    except ApiUnreachable as exc:
        print(f"pao: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # a local file that cannot be read or written
        print(f"pao: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if data is None and not text:
        return 0  # the command wrote its output itself (a download to stdout)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _problem_json(problem: ApiProblem) -> dict[str, Any]:
    return {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "errors": problem.errors,
        "request_id": problem.request_id,
    }
