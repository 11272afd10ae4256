"""`pao dev`: the first thing a new user runs, on the embedded database."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx

from tests.acceptance.procs import Process, free_port, pao, wait_ready
from tests.helpers import SEED_TASK, auth, until


def _postmaster_running(pgdata: Path) -> bool:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_runs_on_a_shared_embedded_database(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PAO_ADMIN_TOKEN")}
    env.update({"PAO_DATA_DIR": str(data), "PAO_PORT": str(port), "PAO_LOG_LEVEL": "warning"})
    dev = Process([sys.executable, "-m", "pao", "dev"], env, tmp_path / "dev.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, dev, timeout=60)
        token = (data / "admin-token").read_text().strip()
        assert token in dev.output()
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
        created = httpx.post(f"{base}/tasks", json=SEED_TASK, headers=auth(token), timeout=10)
        assert created.status_code == 201, created.text
        # The scheduler runs beside the API and reports in.
        until(
            lambda: httpx.get(f"{base}/health", timeout=10).json()["scheduler"]["status"] == "ok",
            "the scheduler to report in",
            every=0.3,
        )

        # Another pao process on this machine joins the same embedded server.
        made = pao("agents", "create", "--name", "cli", "--scopes", "tasks:read", env=env)
        assert made.returncode == 0, made.stderr
        listed = httpx.get(f"{base}/tasks", headers=auth(made.stdout.strip()), timeout=10)
        assert listed.status_code == 200
        assert _postmaster_running(data / "pgdata")

        dev.proc.send_signal(signal.SIGINT)
        assert dev.proc.wait(timeout=30) == 0, dev.output()
        until(
            lambda: not _postmaster_running(data / "pgdata"),
            "the embedded server to stop with pao dev",
            15,
        )

        # Started again, the same token and data are there.
        dev = Process([sys.executable, "-m", "pao", "dev"], env, tmp_path / "dev2.log")
        wait_ready(base, dev, timeout=60)
        again = httpx.get(f"{base}/tasks/{created.json()['id']}", headers=auth(token), timeout=10)
        assert again.status_code == 200
    finally:
        dev.kill()
