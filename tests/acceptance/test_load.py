"""A steady mixed load on real processes: two schedulers, two workers, an API, many agents.

Hundreds of minutely cron tasks fire while agents read and write through the
API, publish events and create once tasks. The load goes on until every cron
task has fired and run, and runs of the agents' once tasks and of their events
have come through too (at least `MIN_LOAD_SECONDS`; `PAO_SOAK_SECONDS`, or the
older `PAO_LOAD_SECONDS`, keeps it going that long). Afterwards SQL checks the
promises: no 5xx, every minute of every cron task decided exactly once and run
at most once successfully, nothing left running, no deadlock, and autovacuum
brings the dead tuples of the hot tables back down.
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import Process, free_port, wait_ready
from tests.helpers import auth, soak_seconds, until

AGENTS = 8
CRON_TASKS_PER_AGENT = 40
# The load lasts at least this long, and until runs of each kind have come through: every
# cron task's, and this many of the agents' once tasks and of the tasks their events fire.
MIN_LOAD_SECONDS = 15.0
ONCE_RUNS = 4 * AGENTS
EVENT_RUNS = 4 * AGENTS
HOT_TABLES = ("due_work", "runs", "tasks", "occurrences")
# The hot tables' relations with rows: the tables, and the partitions of the partitioned ones
# (runs and occurrences hold their rows in monthly partitions: version_0020.sql), each by its
# own name, as autovacuum sees them.
HOT_RELATIONS = (
    "SELECT t FROM unnest(%(tables)s::regclass[]) t "
    "UNION ALL SELECT p.relid FROM unnest(%(tables)s::regclass[]) t, pg_partition_tree(t) p"
)
OK_STATUSES = {200, 201, 202}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900 + soak_seconds())]


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
        self.broadcasts = 0  # events accepted that reach every agent's event tasks

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
        """An event for this agent's own event task or, every other time, for every agent's."""
        event: dict[str, Any] = {"type": "load.ping", "payload": {"n": 1}}
        broadcast = self.random.random() < 0.5
        if broadcast:
            event["audience"] = "*"
        resp = http.post("/events", json=event)
        if broadcast and resp.status_code == 202:
            self.broadcasts += 1
        return resp

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
        f"SELECT relname, n_dead_tup FROM pg_stat_user_tables WHERE relid IN ({HOT_RELATIONS})",
        {"tables": list(HOT_TABLES)},
    ).fetchall()
    return {str(name): int(dead) for name, dead in rows}


@pytest.fixture
def brisk_autovacuum(db: psycopg.Connection[Any]) -> Iterator[None]:
    """The server's autovacuum launcher wakes every 2 s (default: every minute) during the
    test, so that in a short load it visits the hot tables as often as in a long one. The
    tables' own thresholds (the migrations') still decide whether it vacuums them, and it is
    never helped. A server the test may not reconfigure keeps its own pace."""
    try:
        db.execute("ALTER SYSTEM SET autovacuum_naptime = 2")
    except psycopg.errors.InsufficientPrivilege:
        yield
        return
    db.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        db.execute("ALTER SYSTEM RESET autovacuum_naptime")
        db.execute("SELECT pg_reload_conf()")


def _vacuum_state(db: psycopg.Connection[Any]) -> dict[str, tuple[int, float, int]]:
    """Each hot table's dead rows, the count past which autovacuum vacuums it (its own
    settings or the server's), and how many times autovacuum has."""
    db.execute("SELECT pg_stat_clear_snapshot()")
    rows = db.execute(
        f"""
        SELECT s.relname, s.n_dead_tup, s.autovacuum_count,
               coalesce(o.threshold, current_setting('autovacuum_vacuum_threshold')::float8)
               + coalesce(o.scale, current_setting('autovacuum_vacuum_scale_factor')::float8)
                 * greatest(c.reltuples, 0) AS bound
        FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
        CROSS JOIN LATERAL (
            SELECT max(option_value::float8)
                       FILTER (WHERE option_name = 'autovacuum_vacuum_threshold') AS threshold,
                   max(option_value::float8)
                       FILTER (WHERE option_name = 'autovacuum_vacuum_scale_factor') AS scale
            FROM pg_options_to_table(c.reloptions)
        ) o
        WHERE s.relid IN ({HOT_RELATIONS})
        """,
        {"tables": list(HOT_TABLES)},
    ).fetchall()
    return {str(name): (int(dead), float(bound), int(runs)) for name, dead, runs, bound in rows}


def _deadlocks(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _succeeded(db: psycopg.Connection[Any], cron: list[str]) -> dict[str, int]:
    """Succeeded runs so far: of how many cron tasks, of once tasks, of event tasks."""
    row = db.execute(
        "SELECT count(DISTINCT r.task_id) FILTER (WHERE r.task_id = ANY(%s::uuid[])),"
        " count(*) FILTER (WHERE t.schedule_kind = 'once'),"
        " count(*) FILTER (WHERE t.schedule_kind = 'event')"
        " FROM runs r JOIN tasks t ON t.id = r.task_id WHERE r.status = 'succeeded'",
        (cron,),
    ).fetchone()
    assert row is not None
    return {"cron tasks": int(row[0]), "once": int(row[1]), "event": int(row[2])}


def test_a_steady_mixed_load_loses_nothing_and_duplicates_nothing(
    db_url: str,
    db: psycopg.Connection[Any],
    make_token: Callable[..., str],
    tmp_path: Path,
    brisk_autovacuum: None,
) -> None:
    at_least = max(MIN_LOAD_SECONDS, soak_seconds(), float(os.environ.get("PAO_LOAD_SECONDS") or 0))
    scopes = ("tasks:read", "tasks:write", "runs:read", "events:publish", "events:broadcast")
    tokens = [make_token(*scopes, name=f"agent-{i}") for i in range(AGENTS)]
    deadlocks_before = _deadlocks(db)
    stop = threading.Event()
    with _processes(db_url, tmp_path) as base:

        def make_tasks(token: str) -> list[httpx.Response]:
            with httpx.Client(base_url=base, headers=auth(token), timeout=30) as http:
                made = [
                    http.post("/tasks", json=_task("cron", "* * * * *", f"minutely {i}"))
                    for i in range(CRON_TASKS_PER_AGENT)
                ]
                event = http.post("/tasks", json=_task("event", "load.ping", "on ping"))
            assert all(r.status_code == 201 for r in [*made, event])
            return made

        cron: dict[str, list[str]] = {}
        first_fires: list[datetime] = []
        with ThreadPoolExecutor(AGENTS) as agents_at_once:  # the agents set up side by side
            for token, made in zip(tokens, agents_at_once.map(make_tasks, tokens), strict=True):
                cron[token] = [r.json()["id"] for r in made]
                first_fires += [datetime.fromisoformat(r.json()["next_run_at"]) for r in made]
        all_cron = [task for ids in cron.values() for task in ids]
        # Every cron task fires first at this minute at the latest (the next minute, or the
        # one after if they were made across it).
        last_first = max(first_fires)
        agents = [Agent(base, token, cron[token], stop) for token in tokens]
        started = time.monotonic()
        for agent in agents:
            agent.start()
        want = {"cron tasks": len(all_cron), "once": ONCE_RUNS, "event": EVENT_RUNS}

        def enough() -> bool:
            if any(not a.is_alive() for a in agents):
                raise AssertionError("an agent stopped")
            done = _succeeded(db, all_cron)
            return time.monotonic() - started >= at_least and all(
                done[k] >= n for k, n in want.items()
            )

        left = (last_first - datetime.now(UTC)).total_seconds()
        until(enough, f"runs of every kind: {want}", left + at_least + 120, every=0.5)
        seconds = time.monotonic() - started
        stop.set()
        for agent in agents:
            agent.join(timeout=60)
        load_ended = datetime.now(UTC)
        # Let what fell due before the end run out before the processes stop.
        until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM due_work WHERE state IN ('queued', 'running') "
                    "AND run_after <= %s",
                    (load_ended,),
                ).fetchone()
                == (0,)
            ),
            "the work due during the load to finish",
            120,
        )

    statuses = sum((a.statuses for a in agents), Counter())
    failures = [f for a in agents for f in a.failures]
    assert not [s for s in statuses if s >= 500], statuses
    assert not failures, failures[:20]
    assert sum(statuses.values()) > AGENTS * seconds  # the load was real

    # Each minute of each cron task was decided exactly once, with no gap, up to the end.
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
    # Each accepted event fired its publisher's event task once, and each one for every
    # agent ("*") every agent's.
    broadcasts = sum(a.broadcasts for a in agents)
    event_runs = db.execute("SELECT count(*) FROM due_work WHERE reason = 'event'").fetchone()
    assert event_runs == (statuses[202] - broadcasts + AGENTS * broadcasts,)
    assert 0 < broadcasts < statuses[202]
    assert _deadlocks(db) == deadlocks_before
    assert_work_consistent(db, all_final=False)

    # Autovacuum keeps up: the hot tables' dead tuples come back down without help, to a
    # fifth of the live rows (plus 100) or, where a table's own settings wait for more
    # before a vacuum (migration 0009's floor of 1,000 rows), to below that point.
    dead = _dead_tuples(db)
    live = dict(
        db.execute(
            f"SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relid IN ({HOT_RELATIONS})",
            {"tables": list(HOT_TABLES)},
        ).fetchall()
    )
    print(f"after {seconds:.0f}s: {dict(statuses)}; dead tuples {dead}; live {live}")
    until(
        lambda: all(
            n <= max(0.2 * live[t] + 100, bound) for t, (n, bound, _) in _vacuum_state(db).items()
        ),
        f"autovacuum to clear dead tuples (after the load: {dead})",
        240,
        every=1,
    )
    # ... and it did so on its own during the test: the queue churned past its threshold.
    assert _vacuum_state(db)["due_work"][2] > 0
