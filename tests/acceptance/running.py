"""A real `pao api` (and `pao worker`) for tests that drive pao from the outside."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.acceptance.procs import Process, free_port, wait_ready
from tests.helpers import auth, until


@contextmanager
def api_process(db_url: str, log_dir: Path) -> Iterator[str]:
    """`pao api` on the test's database; yields its base URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "PAO_PORT": str(port), "PAO_LOG_LEVEL": "info"}
    api = Process([sys.executable, "-m", "pao", "api"], env, log_dir / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api)
        yield base
    finally:
        api.kill()


@contextmanager
def worker_process(db_url: str, log_dir: Path) -> Iterator[Process]:
    env = {**os.environ, "DATABASE_URL": db_url, "PAO_LOG_LEVEL": "info"}
    worker = Process([sys.executable, "-m", "pao", "worker"], env, log_dir / "worker.log")
    try:
        yield worker
    finally:
        worker.kill()


def finished_run(base: str, token: str, run_id: str) -> dict[str, Any]:
    """The run once it has ended, read from the API."""

    def check() -> dict[str, Any] | None:
        run: dict[str, Any] = httpx.get(
            f"{base}/runs/{run_id}", headers=auth(token), timeout=10
        ).json()
        return None if run["status"] in ("queued", "running") else run

    result: dict[str, Any] = until(check, f"run {run_id} to end")
    return result
