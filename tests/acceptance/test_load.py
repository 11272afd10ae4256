"""A steady mixed load on real processes: two schedulers, two workers, an API, many agents.

For `PAO_LOAD_SECONDS` (default 180) hundreds of minutely cron tasks fire while
agents read and write through the API, publish events, create once tasks and
pause and resume. Afterwards SQL checks the promises: no 5xx, every minute of
every cron task decided exactly once and run at most once successfully,
nothing left running, no deadlock, and autovacuum brings the dead tuples of
the hot tables back down.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import Process, free_port, wait_ready
from tests.helpers import auth

AGENTS = 8
CRON_TASKS_PER_AGENT = 40
HOT_TABLES = ("due_work", "runs", "tasks", "occurrences")
OK_STATUSES = {200, 201, 202}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _env(db_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_LEVEL": "warning",
        "PAO_LEASE_SECONDS": "10",
        **extra,
    }


@contextmanager
def _processes(db_url: str, log_dir: Path) -> Iterator[str]:
    """API, two schedulers and two workers; yields the API's base URL; SIGTERM at the end."""
    port = free_port()
    with ExitStack() as stack:
        procs: list[Process] = []
        api = Process(
            [sys.executable, "-m", "pao", "api"],
            # The agents' pace is the test's to choose, not the per-agent rate limit's.
            _env(
                db_url,
                PAO_PORT=str(port),
                PAO_POOL_MAX_SIZE="20",
                PAO_RATE_LIMIT_PER_MINUTE="100000",
            ),
            log_dir / "api.log",
        )
        procs.append(api)
        stack.callback(_kill_all, procs)
        for name in ("scheduler", "scheduler", "worker", "worker"):
            env = _env(db_url, PAO_WORKER_CONCURRENCY="8")
            procs.append(Process([sys.executable, "-m", "pao", name], env, log_dir / f"{name}.log"))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, api)
        yield base
        for proc in procs:  # a clean stop is part of the test
            code = proc.stop()
            # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
            clean = (0, -signal.SIGTERM) if proc is api else (0,)
            assert code in clean, (proc.proc.args, code, proc.output()[-2000:])


def _kill_all(procs: list[Process]) -> None:
    for proc in procs:
        proc.kill()


class Agent(threading.Thread):
    """One agent's mixed traffic until `stop`; counts every status it sees."""

    def __init__(self, base: str, token: str, tasks: list[str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.tasks, self.stop = base, token, tasks, stop
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.paused: set[str] = set()
        self.random = random.Random(token)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=auth(self.token), timeout=30) as http:
            while not self.stop.is_set():
                action = self.random.choice(self._actions())
                try:
                    resp = action(http)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{action.__name__}: {exc!r}")
                    continue
                self.statuses[resp.status_code] += 1
                if resp.status_code not in OK_STATUSES:
                    self.failures.append(f"{action.__name__}: {resp.status_code} {resp.text[:300]}")
                time.sleep(0.05)

    def _actions(self) -> list[Callable[[httpx.Client], httpx.Response]]:
        return [self._list, self._read, self._read, self._runs, self._event, self._once]

    def _list(self, http: httpx.Client) -> httpx.Response:
        return http.get("/tasks", params={"limit": 20})

    def _read(self, http: httpx.Client) -> httpx.Response:
        return http.get(f"/tasks/{self.random.choice(self.tasks)}")

    def _runs(self, http: httpx.Client) -> httpx.Response:
        return http.get("/runs", params={"limit": 20})

    def _event(self, http: httpx.Client) -> httpx.Response:
        return http.post("/events", json={"type": "load.ping", "payload": {"n": 1}})

    def _once(self, http: httpx.Client) -> httpx.Response:
        at = datetime.now(UTC) + timedelta(seconds=self.random.uniform(1, 10))
        return http.post("/tasks", json=_task("once", at.isoformat(), "once"))


def _task(kind: str, expr: str, title: str) -> dict[str, Any]:
    return {
        "title": title,
        "schedule_kind": kind,
        "schedule_expr": expr,
        "timezone": "UTC",
        "max_retries": 0,
        "payload": {
            "pipeline": [
                {"id": "note", "uses": "log", "with": {"message": "tick"}},
                {"id": "work", "uses": "sleep", "with": {"seconds": 0.05}},
            ]
        },
    }


def _dead_tuples(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute(
        "SELECT relname, n_dead_tup FROM pg_stat_user_tables WHERE relname = ANY(%s)",
        (list(HOT_TABLES),),
    ).fetchall()
    return {str(name): int(dead) for name, dead in rows}


def _deadlocks(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_steady_mixed_load_loses_nothing_and_duplicates_nothing(
    db_url: str,
    db: psycopg.Connection[Any],
    make_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    seconds = float(os.environ.get("PAO_LOAD_SECONDS", "180"))
    scopes = ("tasks:read", "tasks:write", "runs:read", "events:publish")
    tokens = [make_token(*scopes, name=f"agent-{i}") for i in range(AGENTS)]
    deadlocks_before = _deadlocks(db)
    stop = threading.Event()
    with _processes(db_url, tmp_path) as base:
        cron: dict[str, list[str]] = {}
        for token in tokens:
            with httpx.Client(base_url=base, headers=auth(token), timeout=30) as http:
                made = [
                    http.post("/tasks", json=_task("cron", "* * * * *", f"minutely {i}"))
                    for i in range(CRON_TASKS_PER_AGENT)
                ]
                event = http.post("/tasks", json=_task("event", "load.ping", "on ping"))
            assert all(r.status_code == 201 for r in [*made, event])
            cron[token] = [r.json()["id"] for r in made]
        agents = [Agent(base, token, cron[token], stop) for token in tokens]
        for agent in agents:
            agent.start()
        time.sleep(seconds)
        stop.set()
        for agent in agents:
            agent.join(timeout=60)
        load_ended = datetime.now(UTC)
        # Let what fell due before the end run out before the processes stop.
        _wait(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM due_work WHERE state IN ('queued', 'running') "
                    "AND run_after <= %s",
                    (load_ended,),
                ).fetchone()
                == (0,)
            ),
            timeout=120,
            what="the work due during the load to finish",
        )

    statuses = sum((a.statuses for a in agents), Counter())
    failures = [f for a in agents for f in a.failures]
    assert not [s for s in statuses if s >= 500], statuses
    assert not failures, failures[:20]
    assert sum(statuses.values()) > AGENTS * seconds  # the load was real

    # Each minute of each cron task was decided exactly once, with no gap, up to the end.
    all_cron = [task for ids in cron.values() for task in ids]
    gaps = db.execute(
        """
        SELECT task_id, count(*) AS decided,
               (extract(epoch FROM date_trunc('minute', %(end)s::timestamptz)
                                   - min(nominal_at)) / 60)::int + 1 AS minutes
        FROM occurrences WHERE task_id = ANY(%(tasks)s) AND nominal_at <= %(end)s
        GROUP BY task_id
        HAVING count(*) <> (extract(epoch FROM date_trunc('minute', %(end)s::timestamptz)
                                               - min(nominal_at)) / 60)::int + 1
        """,
        {"tasks": all_cron, "end": load_ended},
    ).fetchall()
    assert gaps == []
    # ... and no task was forgotten: each one whose first minute came before the end has one.
    forgotten = db.execute(
        "SELECT t.id FROM tasks t WHERE t.id = ANY(%(tasks)s) "
        "AND t.created_at < date_trunc('minute', %(end)s::timestamptz) "
        "AND NOT EXISTS (SELECT 1 FROM occurrences o WHERE o.task_id = t.id)",
        {"tasks": all_cron, "end": load_ended},
    ).fetchall()
    assert forgotten == []
    # Every occurrence queued during the load ran exactly once, successfully.
    twice = db.execute(
        "SELECT due_work_id FROM runs WHERE status = 'succeeded' "
        "GROUP BY due_work_id HAVING count(*) > 1"
    ).fetchall()
    assert twice == []
    unfinished = db.execute(
        "SELECT d.id, d.state FROM due_work d WHERE d.run_after <= %s AND d.state <> 'succeeded'",
        (load_ended,),
    ).fetchall()
    assert unfinished == []
    assert db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone() == (0,)
    # Each accepted event fired every agent's event task once (events are not per agent).
    event_runs = db.execute("SELECT count(*) FROM due_work WHERE reason = 'event'").fetchone()
    assert event_runs == (AGENTS * statuses[202],)
    assert _deadlocks(db) == deadlocks_before
    assert_work_consistent(db, all_final=False)

    # Autovacuum keeps up: the hot tables' dead tuples come back down without help.
    dead = _dead_tuples(db)
    live = dict(
        db.execute(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            (list(HOT_TABLES),),
        ).fetchall()
    )
    print(f"after {seconds:.0f}s: {dict(statuses)}; dead tuples {dead}; live {live}")
    _wait(
        lambda: all(n <= 0.2 * live[t] + 100 for t, n in _dead_tuples(db).items()),
        timeout=240,
        what=f"autovacuum to clear dead tuples (after the load: {dead})",
    )
