"""The real `pao` command, started as separate processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.acceptance.procs import ROOT, Process, free_port, pao, wait_ready
from tests.helpers import SEED_TASK, auth


@pytest.fixture
def blank_db(db_url: str) -> str:
    """A database with nothing in it: drop the migrated schema the fixture gave us."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return db_url


def test_migrate_agents_and_api_as_processes(blank_db: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": blank_db, "PAO_LOG_LEVEL": "info", "PAO_PORT": str(port)}

    refused = subprocess.run(
        [sys.executable, "run_api.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode != 0
    assert "run `pao migrate` first" in refused.stderr

    # Two migrations at once, as two pods starting together would.
    racers = [
        Process([sys.executable, "-m", "pao", "migrate"], env, tmp_path / f"migrate{i}.log")
        for i in range(2)
    ]
    assert [r.proc.wait(timeout=60) for r in racers] == [0, 0]
    assert sum("applied version_0001.sql" in r.output() for r in racers) == 1

    made = pao("agents", "create", "--name", "ci", "--scopes", "tasks:read,tasks:write", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    bootstrap = pao("agents", "token", env=env).stdout.strip()
    env["PAO_ADMIN_TOKEN"] = bootstrap

    base = f"http://127.0.0.1:{port}"
    api = Process([sys.executable, "-m", "pao", "api"], env, tmp_path / "api.log")
    try:
        wait_ready(base, api)
        created = httpx.post(f"{base}/tasks", json=SEED_TASK, headers=auth(token), timeout=10)
        assert created.status_code == 201, created.text
        admin_view = httpx.get(f"{base}/agents", headers=auth(bootstrap), timeout=10)
        assert admin_view.status_code == 200
        assert {a["name"] for a in admin_view.json()["items"]} == {"ci", "admin"}
        # uvicorn drains, then re-raises the signal so the exit status tells why it stopped.
        assert api.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in api.output()

        # Restarted, it serves the same data, and the bootstrap adds no second admin.
        api = Process([sys.executable, "run_api.py"], env, tmp_path / "api2.log")
        wait_ready(base, api)
        got = httpx.get(f"{base}/tasks/{created.json()['id']}", headers=auth(token), timeout=10)
        assert got.status_code == 200
        agents = httpx.get(f"{base}/agents", headers=auth(bootstrap), timeout=10).json()["items"]
        assert len(agents) == 2
    finally:
        api.kill()
