"""PostgreSQL restarted under a steady load: every process rides it out without help.

An API, a scheduler and two workers serve a stream of events (each fires an
event task) and reads while the database is stopped (fast or immediate) and
started again. Meanwhile the API answers 503, never 500; afterwards every
event it accepted has run exactly once, and nothing is left running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest

from pao.migrate import migrate
from pao.tokens import new_token
from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import Process, free_port, until_logged, wait_ready
from tests.helpers import auth, until
from tests.pgcluster import Cluster

pytestmark = pytest.mark.timeout(300)


class Load(threading.Thread):
    """Publish an event and read a list, over and over, counting what the API answers."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__(daemon=True)
        self.base, self.token = base, token
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.unanswered = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=auth(self.token), timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                for method, path, body in (
                    ("POST", "/events", {"type": "restart.ping", "payload": {"n": n}}),
                    ("GET", "/runs", None),
                ):
                    try:
                        resp = http.request(method, path, json=body)
                    except httpx.HTTPError:
                        self.unanswered += 1
                        continue
                    key = resp.status_code if method == "GET" else resp.status_code * 10
                    self.statuses[key] += 1
                time.sleep(0.05)


def _count(url: str, sql: str) -> int | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(sql).fetchone()
    except psycopg.OperationalError:
        return None
    return int(row[0]) if row else None


def _wait(url: str, sql: str, want: int, timeout: float, what: str) -> None:
    until(lambda: _count(url, sql) == want, what, timeout, every=0.3)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_every_process_rides_out_a_database_restart_under_load(
    cluster: Cluster, tmp_path: Path, mode: str
) -> None:
    asyncio.run(migrate(cluster.url))
    token = new_token()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": cluster.url,
        "PAO_LOG_LEVEL": "info",
        "PAO_ADMIN_TOKEN": token,
        "PAO_PORT": str(port),
        "PAO_LEASE_SECONDS": "10",
        "PAO_RETRY_BASE_SECONDS": "0",
        "PAO_SCHEDULER_TICK_MS": "200",
        "PAO_RATE_LIMIT_PER_MINUTE": "100000",  # the load's pace is the test's
    }
    names = ("api", "scheduler", "worker", "worker")
    procs = [
        Process([sys.executable, "-m", "pao", name], env, tmp_path / f"{name}-{i}.log")
        for i, name in enumerate(names)
    ]
    base = f"http://127.0.0.1:{port}"
    load = Load(base, token)
    try:
        wait_ready(base, procs[0])
        made = httpx.post(
            f"{base}/tasks",
            headers=auth(token),
            json={
                "title": "on ping",
                "schedule_kind": "event",
                "schedule_expr": "restart.ping",
                "payload": {
                    "pipeline": [{"id": "work", "uses": "sleep", "with": {"seconds": 0.2}}]
                },
            },
        )
        assert made.status_code == 201, made.text
        load.start()
        # The load is flowing: events accepted and run.
        _wait(
            cluster.url,
            "SELECT least(count(*), 1) FROM due_work WHERE state = 'succeeded'",
            1,
            timeout=30,
            what="an event's run to succeed",
        )
        until(lambda: load.statuses[2020] >= 12, "a dozen events accepted")
        cluster.stop(mode)
        # Past the pools' wait: requests are refused (503), the scheduler's ticks and the
        # workers' claims fail, and each process says so.
        until(lambda: load.statuses[5030] + load.statuses[503] > 0, "a 503 from the API")
        for p in procs[1:]:
            until_logged(p, "database unavailable")
        assert all(p.proc.poll() is None for p in procs), [p.output()[-1000:] for p in procs]
        cluster.start()
        # Served again: a dozen more events accepted after the restart.
        again = load.statuses[2020] + 12
        until(lambda: load.statuses[2020] >= again, "a dozen more events accepted", 60)
        load.stop.set()
        load.join(timeout=60)
        accepted = load.statuses[2020]
        _wait(
            cluster.url,
            "SELECT count(*) FROM due_work WHERE state = 'succeeded'",
            accepted,
            timeout=90,
            what=f"the {accepted} accepted events to run",
        )
        stopped = [p.stop() for p in procs]
    finally:
        load.stop.set()
        for p in procs:
            p.kill()

    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
    assert stopped[0] in (0, -signal.SIGTERM), stopped
    assert stopped[1:] == [0, 0, 0], stopped
    # The API answered every request: 202/200 or, while the database was away, 503.
    assert set(load.statuses) <= {2020, 5030, 200, 503}, load.statuses
    assert load.statuses[5030] + load.statuses[503] > 0, "the outage was not seen"
    assert load.unanswered == 0
    assert accepted > 20
    with psycopg.connect(cluster.url) as conn:
        # Each accepted event queued one occurrence, which ran exactly once successfully.
        assert conn.execute("SELECT count(*) FROM due_work").fetchone() == (accepted,)
        twice = conn.execute(
            "SELECT due_work_id FROM runs WHERE status = 'succeeded' "
            "GROUP BY due_work_id HAVING count(*) > 1"
        ).fetchall()
        assert twice == []
        assert conn.execute(
            "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')"
        ).fetchone() == (0,)
        assert_work_consistent(conn)
    logs = "".join(p.output() for p in procs)
    assert "database unavailable" in logs
    assert "Traceback" not in logs
