"""Starting, watching and stopping real `pao` processes in tests."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.helpers import until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pao(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pao", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """`os.environ` is `env` for the block, then what it was."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def pao_inline(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`pao ARGS` as `pao()` runs it, but in this process: `pao.cli.main` with this environment,
    working directory and stdin closed, its exit status and output (bytes) captured as a
    subprocess's would be. A second rather than a Python start-up and the imports per command;
    the tests that use it keep at least one real `pao()` per command family for the process
    boundary itself."""
    from pao.cli import main

    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # `main` sends logging to its stderr
    try:
        with (
            _environment(env),
            contextlib.chdir(cwd or ROOT),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            open(os.devnull) as stdin,
        ):
            saved_stdin, sys.stdin = sys.stdin, stdin
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors, as `python -m pao` would exit
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                sys.stdin = saved_stdin
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(["pao", *args], code, out.getvalue(), err.getvalue())


def pao_text(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`pao_inline` with its output decoded, as `pao()` returns it."""
    done = pao_inline(*args, env=env)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


class Process:
    """A `pao` process whose output goes to a file, so no pipe is left open."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("a") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def kill(self) -> None:
        """Clean-up: ask politely (so children and servers stop too), then insist."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def worker_id(db: psycopg.Connection[Any], proc: Process) -> str:
    """The id a worker process beats under (its pid is in the heartbeat row)."""
    row = until(
        lambda: db.execute(
            "SELECT process_id FROM process_heartbeats WHERE pid = %s", (proc.proc.pid,)
        ).fetchone(),
        "the worker's first heartbeat",
    )
    return str(row[0])


def until_running(
    procs: Sequence[Process], check: Callable[[], Any], what: str, timeout: float = 30
) -> Any:
    """`until` the check holds, failing at once (with its output) if a process exits."""

    def alive_and() -> Any:
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"a process exited early ({what}):\n{p.output()}")
        return check()

    return until(alive_and, what, timeout)


def until_logged(proc: Process, text: str, timeout: float = 30) -> None:
    """Until the process has written `text` to its output."""
    until(lambda: text in proc.output(), f"{text!r} in {proc.log.name}", timeout)


def wait_ready(base: str, api: Process, timeout: float = 30.0) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    until_running([api], ready, "the API to be ready", timeout)


@contextmanager
def pao_process(name: str, env: dict[str, str], log: Path) -> Iterator[Process]:
    """`pao <name>` for the block; stopped (politely, then not) when it ends."""
    proc = Process([sys.executable, "-m", "pao", name], env, log)
    try:
        yield proc
    finally:
        proc.kill()
