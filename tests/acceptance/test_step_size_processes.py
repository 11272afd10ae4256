"""A real `pao worker` survives a step whose input would be 2 GiB, and keeps working."""

from __future__ import annotations

import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.settings import Settings
from tests.acceptance.procs import pao_process, worker_id
from tests.helpers import create_task, run_now, serving, until

MIB = 1024 * 1024
BODY = b"x" * (10 * MIB)


@pytest.fixture
def settings() -> Settings:
    """The in-process API accepts the local server as a target."""
    return Settings(pool_min_size=1, pool_max_size=4, http_allow=("127.0.0.1",))


class _TenMiB(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ten_mib() -> Iterator[str]:
    with serving(_TenMiB) as base:
        yield f"{base}/big"


def _memory_kib(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (the most it has ever been resident), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _run(db: psycopg.Connection[Any], run_id: str) -> tuple[str, str | None, str | None]:
    row = db.execute("SELECT status, error, worker_id FROM runs WHERE id = %s", (run_id,))
    found = row.fetchone()
    assert found is not None
    return found[0], found[1], found[2]


def _ended(db: psycopg.Connection[Any], run_id: str) -> tuple[str, str | None, str | None]:
    def check() -> tuple[str, str | None, str | None] | None:
        run = _run(db, run_id)
        return None if run[0] in ("queued", "running") else run

    ended: tuple[str, str | None, str | None] = until(check, f"run {run_id} to end")
    return ended


def test_a_worker_survives_a_2_gib_input_and_runs_the_next_task(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
    ten_mib: str,
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_LEVEL": "info",
        "PAO_HTTP_ALLOW": "127.0.0.1",
        "PAO_RETRY_BASE_SECONDS": "0",
    }
    huge = create_task(
        client,
        writer_token,
        {"id": "a", "uses": "http.request", "with": {"url": ten_mib, "max_bytes": 10 * MIB}},
        {"id": "b", "uses": "log", "with": {"message": "${steps.a.body}" * 200}},
        max_retries=3,
    )
    small = create_task(
        client, writer_token, {"id": "hi", "uses": "log", "with": {"message": "hi"}}
    )
    with pao_process("worker", env, tmp_path / "worker.log") as worker:
        pid = worker.proc.pid
        me = worker_id(db, worker)
        before = _memory_kib(pid, "VmRSS")

        status, error, by = _ended(db, run_now(client, writer_token, huge))
        assert (status, by) == ("failed", me), error
        assert error is not None
        assert error.startswith("step b: its input is more than 1048576 bytes"), error
        assert "PAO_STEP_INPUT_MAX_BYTES" in error
        # Not retried: the same 10 MiB would pass the cap the same way again.
        assert db.execute("SELECT count(*) FROM runs WHERE task_id = %s", (huge,)).fetchone() == (
            1,
        )

        # The same process, never far above where it started (2 GiB would have been built).
        assert worker.proc.poll() is None, worker.output()
        peak = _memory_kib(pid, "VmHWM")
        assert peak - before < 256 * 1024, f"resident {before} KiB, then at most {peak} KiB"

        # And it goes on working.
        assert _ended(db, run_now(client, writer_token, small)) == ("succeeded", None, me)
        assert worker.proc.pid == pid
        assert worker.proc.poll() is None
