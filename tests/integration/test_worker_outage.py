"""A run that ends while PostgreSQL is down keeps its end until it can be written."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from api.app import create_app
from pao.migrate import migrate
from pao.settings import Settings
from tests.background import worker
from tests.helpers import SEED_TASK, auth, new_agent, until
from tests.pgcluster import Cluster


def _rows(url: str, sql: str) -> list[tuple[Any, ...]] | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute(sql).fetchall()
    except psycopg.OperationalError:
        return None


def _until(url: str, sql: str, want: list[tuple[Any, ...]], timeout: float = 30) -> None:
    until(lambda: _rows(url, sql) == want, f"{sql} to give {want}", timeout)


def test_an_end_written_after_the_database_returns_is_not_run_again(cluster: Cluster) -> None:
    asyncio.run(migrate(cluster.url))
    token = new_agent(cluster.url, ["tasks:read", "tasks:write", "runs:read"])
    app = create_app(Settings(pool_min_size=1, pool_max_size=2), database_url=cluster.url)
    body = {
        **SEED_TASK,
        "payload": {"pipeline": [{"id": "nap", "uses": "sleep", "with": {"seconds": 1.5}}]},
    }
    with TestClient(app) as client:
        task = client.post("/tasks", json=body, headers=auth(token)).json()
        with worker(cluster.url):
            assert client.post(f"/tasks/{task['id']}/run_now", headers=auth(token)).is_success
            _until(cluster.url, "SELECT status FROM runs", [("running",)])
            cluster.stop("fast")
            # The step ends meanwhile (nothing tells of it while the database is away: a
            # step's end is counted only in `pao worker`'s metrics); its end cannot be written.
            time.sleep(3)
            cluster.start()
            _until(cluster.url, "SELECT attempt, status FROM runs", [(1, "succeeded")])
        runs = _rows(cluster.url, "SELECT attempt, status, steps->0->>'status' FROM runs")
        assert runs == [(1, "succeeded", "succeeded")]
        assert _rows(cluster.url, "SELECT state, attempt FROM due_work") == [("succeeded", 1)]
