"""pao behind a real PgBouncer in transaction mode (Debian's package, as docs/pgbouncer.md).

An API, two schedulers and two workers reach PostgreSQL only through the pooler, with
PAO_DATABASE_POOLER=transaction, and LISTEN on a direct URL (PAO_LISTEN_DATABASE_URL).
A mixed load (rrule, cron and once tasks, events, run_now, and runs with a remote step
that two claimants in the test claim over HTTP) must lose nothing and do nothing twice,
answer no request with a 5xx, and pick work up about as fast as without the pooler
(measured here both ways, on idle workers woken by NOTIFY). Without a direct URL the
processes say so at start and work by polling.

Skipped where PgBouncer is not installed, unless PAO_REQUIRE_PGBOUNCER is set (CI).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import statistics
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pao.migrate import available, migrate
from tests import pgbouncer
from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import Process, free_port, wait_ready
from tests.conftest import Server
from tests.helpers import auth, until

pytestmark = pytest.mark.timeout(240)

Conn = psycopg.Connection[Any]
SCOPES = ("tasks:read", "tasks:write", "runs:read", "events:publish")
PICKUPS = 25
QUICK = [{"id": "note", "uses": "log", "with": {"message": "tick"}}]
# A step done outside pao: offered by the worker, claimed and completed over HTTP.
REMOTE_TYPE = "pgb.render"
REMOTE_RUNS = 10
REMOTE = [
    {"id": "render", "uses": REMOTE_TYPE, "with": {"n": 1}},
    {"id": "after", "uses": "log", "with": {"message": "rendered"}},
]


@pytest.fixture
def bouncer(db_url: str) -> Iterator[pgbouncer.Bouncer]:
    why = pgbouncer.missing()
    if why is not None:
        if os.environ.get("PAO_REQUIRE_PGBOUNCER"):
            pytest.fail(f"PAO_REQUIRE_PGBOUNCER is set but {why}")
        pytest.skip(why)
    with pgbouncer.pgbouncer(db_url) as b:
        yield b


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PAO_LOG_LEVEL": "info",
        "PAO_LEASE_SECONDS": "10",
        "PAO_SCHEDULER_TICK_MS": "200",
        "PAO_RATE_LIMIT_PER_MINUTE": "100000",
        **extra,
    }


@contextmanager
def _processes(
    env: dict[str, str], log_dir: Path, names: tuple[str, ...]
) -> Iterator[tuple[str, list[Process]]]:
    """`pao api` and the named processes; the API's base URL and every process. Each must
    stop cleanly on SIGTERM at the end."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        api = Process(
            [sys.executable, "-m", "pao", "api"],
            {**env, "PAO_PORT": str(port)},
            log_dir / "api.log",
        )
        procs = [api]
        stack.callback(_kill_all, procs)
        for i, name in enumerate(names):
            procs.append(
                Process([sys.executable, "-m", "pao", name], env, log_dir / f"{name}-{i}.log")
            )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, api)
        yield base, procs
        for proc in procs:
            code = proc.stop()
            # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
            clean = (0, -signal.SIGTERM) if proc is api else (0,)
            assert code in clean, (proc.proc.args, code, proc.output()[-3000:])


def _kill_all(procs: list[Process]) -> None:
    for proc in procs:
        proc.kill()


def _task(kind: str, expr: str, title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": title,
        "schedule_kind": kind,
        "schedule_expr": expr,
        "timezone": "UTC",
        "max_retries": 0,
        "payload": {"pipeline": QUICK},
        **extra,
    }


class Client:
    """An agent's HTTP client that counts every status it is answered."""

    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=base, headers=auth(token), timeout=30)
        self.statuses: Counter[int] = Counter()

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, body: Any = None) -> dict[str, Any]:
        resp = self.http.post(path, json=body)
        self.statuses[resp.status_code] += 1
        assert resp.status_code in (200, 201, 202), (path, resp.status_code, resp.text)
        out: dict[str, Any] = resp.json()
        return out

    def get(self, path: str) -> Any:
        resp = self.http.get(path)
        self.statuses[resp.status_code] += 1
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json()


class Claimant(threading.Thread):
    """An agent outside pao doing the remote steps: long-polls for a step of the type through
    the API, completes it, and notes every step it was handed (to prove none came twice)."""

    def __init__(self, base: str, token: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = Client(base, token)
        self.stop = stop
        self.done: list[tuple[str, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                claimed = self.client.post(
                    f"/task-types/{REMOTE_TYPE}/claim", {"limit": 2, "wait_seconds": 1}
                )
                for item in claimed["items"]:
                    self.done.append((item["run_id"], item["step_id"]))
                    self.client.post(
                        f"/claims/{item['claim_id']}/complete", {"output": {"ok": True}}
                    )
        except BaseException as exc:  # reported by the test after join
            self.error = exc
        finally:
            self.client.close()


def _measure_pickups(client: Client, db: Conn, count: int) -> list[float]:
    """Seconds from run_now to the run's start, one run at a time on idle workers (so each
    is woken by its notification, or found by a poll), by the database's clock."""
    task = client.post("/tasks", _task("event", "never.fired", "pickup probe"))
    for _ in range(count):
        run_id = client.post(f"/tasks/{task['id']}/run_now")["id"]
        until(functools.partial(_ended, db, run_id), "the probe run to succeed")
    rows = db.execute(
        "SELECT extract(epoch FROM started_at - queued_at) FROM runs WHERE task_id = %s",
        (task["id"],),
    ).fetchall()
    return sorted(float(r[0]) for r in rows)


def _ended(db: Conn, run_id: str) -> bool:
    row = db.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()
    return row is not None and row[0] == "succeeded"


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _figures(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"p50 {statistics.median(ms):.1f} ms, p99 {_quantile(ms, 0.99):.1f} ms "
        f"(n={len(ms)}, max {max(ms):.1f} ms)"
    )


def _succeeded(db: Conn, where: str, params: Any = ()) -> int:
    row = db.execute(
        "SELECT count(*) FROM runs r JOIN tasks t ON t.id = r.task_id"
        f" WHERE r.status = 'succeeded' AND {where}",
        params,
    ).fetchone()
    assert row is not None
    return int(row[0])


def _warned(proc: Process) -> bool:
    return "PAO_LISTEN_DATABASE_URL is not set" in proc.output()


def _no_pooler_trouble(procs: list[Process]) -> None:
    for proc in procs:
        out = proc.output()
        assert "prepared statement" not in out, out[-3000:]
        assert "unexpected error" not in out, out[-3000:]


def test_processes_behind_pgbouncer_lose_nothing_duplicate_nothing_and_pick_up_fast(
    bouncer: pgbouncer.Bouncer,
    db_url: str,
    db: Conn,
    make_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    token = make_token(*SCOPES, name="pooled")

    # Pickup without the pooler first: an API and a worker straight on PostgreSQL.
    with _processes(_env(DATABASE_URL=db_url), tmp_path / "direct", ("worker",)) as (base, _):
        probe = Client(base, token)
        direct = _measure_pickups(probe, db, PICKUPS)
        probe.close()

    admin = make_token("admin", name="typist")
    claimer = make_token("work:claim", name="claimant")
    pooled_env = _env(
        DATABASE_URL=bouncer.url(db_url),
        PAO_DATABASE_POOLER="transaction",
        PAO_LISTEN_DATABASE_URL=db_url,
    )
    names = ("scheduler", "scheduler", "worker", "worker")
    with _processes(pooled_env, tmp_path / "pooled", names) as (base, procs):
        client = Client(base, token)
        typist = Client(base, admin)
        typist.post("/task-types", {"name": REMOTE_TYPE, "parameters_schema": {"type": "object"}})
        typist.close()
        stop = threading.Event()
        claimants = [Claimant(base, claimer, stop) for _ in range(2)]
        for claimant in claimants:
            claimant.start()
        now = datetime.now(UTC)
        expected: dict[uuid.UUID, set[datetime]] = {}
        # rrule: once a minute at a second a few seconds from now, a different one each.
        for i in range(4):
            first = (now + timedelta(seconds=6 + 2 * i)).replace(microsecond=0)
            rule = f"FREQ=MINUTELY;BYSECOND={first.second}"
            made = client.post("/tasks", _task("rrule", rule, f"rrule {i}"))
            expected[uuid.UUID(made["id"])] = {first}
        # cron: at the next minute; waited for only if that comes soon enough.
        minute = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
        cron = [
            client.post("/tasks", _task("cron", "* * * * *", f"cron {i}"))["id"] for i in range(4)
        ]
        if minute - now < timedelta(seconds=30):
            expected.update({uuid.UUID(task_id): {minute} for task_id in cron})
        for i in range(10):
            at = (now + timedelta(seconds=2 + i * 0.5)).replace(microsecond=0)
            made = client.post("/tasks", _task("once", at.isoformat(), f"once {i}"))
            expected[uuid.UUID(made["id"])] = {at}
        on_ping = client.post("/tasks", _task("event", "pgb.ping", "on ping"))["id"]
        events = [
            client.post("/events", {"type": "pgb.ping", "payload": {"n": i}}) for i in range(10)
        ]
        by_hand = client.post("/tasks", _task("event", "never.fired", "by hand"))["id"]
        remote = client.post(
            "/tasks", {**_task("event", "never.fired", "remote"), "payload": {"pipeline": REMOTE}}
        )["id"]
        for _ in range(10):
            client.post(f"/tasks/{by_hand}/run_now")
            client.get(f"/tasks/{by_hand}")
            client.get("/runs?limit=20")
        remote_runs = {client.post(f"/tasks/{remote}/run_now")["id"] for _ in range(REMOTE_RUNS)}

        want = {task: len(times) for task, times in expected.items()}
        until(
            lambda: all(_succeeded(db, "t.id = %s", (task,)) >= n for task, n in want.items()),
            "every scheduled occurrence to run",
            timeout=90,
        )
        until(lambda: _succeeded(db, "t.id = %s", (on_ping,)) == 10, "the events' runs")
        until(lambda: _succeeded(db, "t.id = %s", (by_hand,)) == 10, "the run_now runs")
        until(
            lambda: _succeeded(db, "t.id = %s", (remote,)) == REMOTE_RUNS,
            "the runs with a remote step",
        )
        stop.set()
        for claimant in claimants:
            claimant.join(timeout=30)
            assert claimant.error is None, claimant.error
        pooled = _measure_pickups(client, db, PICKUPS)
        client.close()
        _no_pooler_trouble(procs)

    print(f"\npickup direct:        {_figures(direct)}")
    print(f"pickup via PgBouncer: {_figures(pooled)} (LISTEN on a direct URL)")
    statuses = sum((c.client.statuses for c in claimants), client.statuses)
    print(f"HTTP statuses: {dict(statuses)}")
    assert not [s for s in statuses if s >= 500], statuses
    stored = db.execute(
        "SELECT count(*) FILTER (WHERE dispatched_at IS NOT NULL), count(*) FROM events"
        " WHERE id = ANY(%s)",
        ([e["id"] for e in events],),
    ).fetchone()
    assert stored == (10, 10)
    twice = db.execute(
        "SELECT due_work_id FROM runs WHERE status = 'succeeded' GROUP BY 1 HAVING count(*) > 1"
    ).fetchall()
    assert twice == []
    # Each remote step was handed out once, to one claimant, and completed: none done twice
    # (the claimants' own notes and the claim counts agree), none lost.
    handed = [step for c in claimants for step in c.done]
    assert sorted(handed) == sorted((run, "render") for run in remote_runs)
    remote_steps = db.execute(
        "SELECT run_id::text, state, deliveries FROM remote_steps WHERE task_type = %s",
        (REMOTE_TYPE,),
    ).fetchall()
    assert sorted(remote_steps) == sorted((run, "succeeded", 1) for run in remote_runs)
    assert_work_consistent(db, expected=expected, all_final=False)
    # Woken by notifications, not found by polls; loosely within twice the direct figures.
    assert statistics.median(pooled) < 0.1, _figures(pooled)
    assert _quantile(pooled, 0.99) <= 2 * _quantile(direct, 0.99) + 0.05, (
        _figures(direct),
        _figures(pooled),
    )


def test_without_a_listen_url_behind_pgbouncer_the_processes_warn_and_poll(
    bouncer: pgbouncer.Bouncer,
    db_url: str,
    db: Conn,
    make_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    token = make_token(*SCOPES, name="polled")
    env = _env(DATABASE_URL=bouncer.url(db_url), PAO_DATABASE_POOLER="transaction")
    with _processes(env, tmp_path, ("scheduler", "worker")) as (base, procs):
        api, _, worker = procs
        for proc in (api, worker):
            until(functools.partial(_warned, proc), "the warning")
        client = Client(base, token)
        on_ping = client.post("/tasks", _task("event", "pgb.ping", "on ping"))["id"]
        for i in range(3):
            client.post("/events", {"type": "pgb.ping", "payload": {"n": i}})
        until(lambda: _succeeded(db, "t.id = %s", (on_ping,)) == 3, "the events' runs")
        polled = _measure_pickups(client, db, 8)
        client.close()
        _no_pooler_trouble(procs)
    print(f"\npickup via PgBouncer, polling: {_figures(polled)}")
    assert not [s for s in client.statuses if s >= 500], client.statuses
    assert_work_consistent(db, all_final=False)


def test_migrations_run_through_pgbouncer_each_file_once(
    bouncer: pgbouncer.Bouncer, pg_server: Server
) -> None:
    """Racing `pao migrate` runs through the pooler: the lock lives in each transaction, so
    it holds across the server connections PgBouncer hands out."""
    name = f"pao_pooled_{os.getpid()}"
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=name,
    )
    with janitor:
        url = bouncer.url(pg_server.url_for(name))

        async def race() -> list[int]:
            return [len(done) for done in await asyncio.gather(*(migrate(url) for _ in range(3)))]

        assert sum(asyncio.run(race())) == len(available())
        with psycopg.connect(pg_server.url_for(name)) as conn:
            rows = conn.execute("SELECT version FROM pao_migrations ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == [m.version for m in available()]
