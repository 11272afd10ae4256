"""The primary fails under load and its synchronous standby is promoted: pao goes on by itself.

A PostgreSQL 15 primary streams synchronously to a hot standby (tests/pgpair.py). An API,
two schedulers and two workers all reach it through one multi-host DATABASE_URL with
`target_session_attrs=read-write`. A mixed load runs: minutely cron and rrule tasks (the
rrule ones a few seconds apart), one-off tasks falling due every few seconds, events and
run_now through the API, and runs with a remote step that two claimants in the test claim
and complete over HTTP. Once work flows the primary is stopped (`-m immediate`, as a
crash would), every process sees the outage (the API answers 503), then the standby is
promoted while the load goes on. Each process finds the new primary by itself; the work
due meanwhile runs; and the SQL check of the promises on the new primary finds no
occurrence lost, doubled or ended twice, and everything the API acknowledged stored.

Skipped where Debian's PostgreSQL 15 is not installed, unless PAO_REQUIRE_FAILOVER is set (CI).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pao.migrate import migrate
from pao.tokens import new_token
from tests import pgpair
from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import Process, free_port, until_logged, until_running, wait_ready
from tests.helpers import auth

pytestmark = pytest.mark.timeout(240)

Conn = psycopg.Connection[Any]
CRON_TASKS = 6
RRULE_SECONDS = range(0, 60, 5)  # an rrule occurrence falls due every five seconds
QUICK = [{"id": "note", "uses": "log", "with": {"message": "tick"}}]
WORK = [
    {"id": "note", "uses": "log", "with": {"message": "tick"}},
    {"id": "work", "uses": "sleep", "with": {"seconds": 0.2}},
]
OK = {200, 201, 202}
BACKGROUND = ("scheduler", "scheduler", "worker", "worker")
# A step done outside pao, by the claimants below: offered by a worker, claimed and
# completed over HTTP, across the outage too.
REMOTE_TYPE = "failover.render"
REMOTE = [
    {"id": "render", "uses": REMOTE_TYPE, "with": {"n": 1}},
    {"id": "after", "uses": "log", "with": {"message": "rendered"}},
]


@pytest.fixture
def pair() -> Iterator[pgpair.Pair]:
    pgpair.require()
    with pgpair.pair() as made:
        yield made


def _task(kind: str, expr: str, title: str, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "title": title,
        "schedule_kind": kind,
        "schedule_expr": expr,
        "timezone": "UTC",
        "max_retries": 0,
        "payload": {"pipeline": pipeline},
    }


class Load(threading.Thread):
    """An agent's mixed traffic until `stop`: events, run_now, one-off tasks and reads.

    Counts every status, and keeps what the API acknowledged: each event, run and one-off
    task answered 2xx must be found stored afterwards.
    """

    def __init__(self, base: str, token: str, on_ping: str, by_hand: str, remote: str) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.on_ping, self.by_hand = base, token, on_ping, by_hand
        self.remote = remote
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.unanswered: list[str] = []
        self.events: list[str] = []
        self.runs: list[str] = []
        self.remote_runs: list[str] = []
        self.once: dict[str, datetime] = {}
        self.refused: list[str] = []  # any answer not 2xx nor 503

    def ok(self, kind: str) -> int:
        made = {"event": self.events, "run_now": self.runs, "remote": self.remote_runs}
        return len(made[kind]) if kind in made else len(self.once)

    def _request(self, what: str, n: int, at: datetime) -> tuple[str, str, Any]:
        if what == "event":
            return "POST", "/events", {"type": "failover.ping", "payload": {"n": n}}
        if what == "run_now":
            return "POST", f"/tasks/{self.by_hand}/run_now", None
        if what == "remote":
            return "POST", f"/tasks/{self.remote}/run_now", None
        if what == "once":
            return "POST", "/tasks", _task("once", at.isoformat(), f"once {n}", QUICK)
        return "GET", "/runs?limit=20", None

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=auth(self.token), timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                for what in ("event", "run_now", "remote", "once", "read"):
                    # A one-off due a few seconds after it is asked for (not after the
                    # requests before it, which take seconds while there is no primary).
                    at = (datetime.now(UTC) + timedelta(seconds=3 + n % 4)).replace(microsecond=0)
                    method, path, body = self._request(what, n, at)
                    try:
                        resp = http.request(method, path, json=body)
                    except httpx.HTTPError as exc:
                        self.unanswered.append(f"{what}: {exc!r}")
                        continue
                    self.statuses[resp.status_code] += 1
                    if resp.status_code in OK:
                        if what == "event":
                            self.events.append(resp.json()["id"])
                        elif what == "run_now":
                            self.runs.append(resp.json()["id"])
                        elif what == "remote":
                            self.remote_runs.append(resp.json()["id"])
                        elif what == "once":
                            self.once[resp.json()["id"]] = at
                    elif resp.status_code != 503:
                        self.refused.append(f"{what}: {resp.status_code} {resp.text[:300]}")
                time.sleep(0.05)


class Claimant(threading.Thread):
    """A service outside pao doing the remote steps until `stop`: long-polls for steps of the
    type and completes each, asking again while there is no primary (a 503 or no answer),
    until its completion is answered. Notes the steps it was handed and each answer to its
    completions, to prove that no step was done twice and none lost."""

    def __init__(self, base: str, token: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.stop = base, token, stop
        self.handed: list[tuple[str, str]] = []
        self.completed: list[tuple[str, str, int]] = []  # run, step, final status
        self.refused: list[str] = []  # any answer not 2xx, 409 nor 503

    def _ask(self, http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response | None:
        """The answer, or None while there is no primary (asked again by the caller)."""
        try:
            resp = http.post(path, json=body)
        except httpx.HTTPError:
            return None
        if resp.status_code == 503:
            return None
        if resp.status_code not in OK | {409}:
            self.refused.append(f"{path}: {resp.status_code} {resp.text[:300]}")
        return resp

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=auth(self.token), timeout=30) as http:
            while not self.stop.is_set():
                claim = {"limit": 2, "wait_seconds": 1}
                resp = self._ask(http, f"/task-types/{REMOTE_TYPE}/claim", claim)
                if resp is None or resp.status_code != 200:
                    self.stop.wait(0.2)  # the outage: a pause, cut short when the test ends
                    continue
                for item in resp.json()["items"]:
                    step = (item["run_id"], item["step_id"])
                    self.handed.append(step)
                    done = None
                    while done is None and not self.stop.is_set():
                        path = f"/claims/{item['claim_id']}/complete"
                        done = self._ask(http, path, {"output": {"ok": True}})
                        if done is None:
                            self.stop.wait(0.2)
                    if done is not None:
                        self.completed.append((*step, done.status_code))


def _succeeded(db: Conn, kind: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM runs r JOIN tasks t ON t.id = r.task_id"
        " WHERE r.status = 'succeeded' AND t.schedule_kind = %s"
        " AND t.title NOT IN ('by hand', 'remote')",
        (kind,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _flowing(db: Conn, load: Load) -> bool:
    """Runs of every kind have come through, and the load has been acknowledged."""
    by_hand = db.execute(
        "SELECT count(*) FROM runs r JOIN tasks t ON t.id = r.task_id"
        " WHERE r.status = 'succeeded' AND t.title = 'by hand'"
    ).fetchone()
    remote = db.execute(
        "SELECT count(*) FROM runs r JOIN tasks t ON t.id = r.task_id"
        " WHERE r.status = 'succeeded' AND t.title = 'remote'"
    ).fetchone()
    kinds = {k: _succeeded(db, k) for k in ("rrule", "once", "event")}
    hand_and_remote = bool(by_hand and by_hand[0] >= 2 and remote and remote[0] >= 2)
    return hand_and_remote and all(n >= 2 for n in kinds.values())


def _expected(first: dict[uuid.UUID, datetime], end: datetime) -> dict[uuid.UUID, set[datetime]]:
    """Every minutely occurrence of each task from its first fire up to `end`."""
    out: dict[uuid.UUID, set[datetime]] = {}
    for task, at in first.items():
        times = out.setdefault(task, set())
        while at <= end:
            times.add(at)
            at += timedelta(minutes=1)
    return out


def _all_ran(db: Conn, expected: dict[uuid.UUID, set[datetime]], end: datetime) -> bool:
    """Every expected occurrence, every acknowledged run_now and one-off, and everything else
    due by `end` has succeeded."""
    pairs = [(task, at) for task, times in expected.items() for at in times]
    row = db.execute(
        "SELECT count(*) FROM due_work d"
        " JOIN unnest(%s::uuid[], %s::timestamptz[]) AS e(task_id, at)"
        " ON d.task_id = e.task_id AND d.scheduled_for = e.at WHERE d.state = 'succeeded'",
        ([t for t, _ in pairs], [a for _, a in pairs]),
    ).fetchone()
    if row is None or row[0] != len(pairs):
        return False
    unfinished = db.execute(
        "SELECT count(*) FROM due_work WHERE run_after <= %s AND state <> 'succeeded'", (end,)
    ).fetchone()
    return unfinished == (0,)


def _unfinished(db: Conn, end: datetime) -> str:
    """What is due by `end` and has not succeeded, with its run and remote steps: what a
    failed wait for every run prints."""
    rows = db.execute(
        "SELECT d.id, t.title, d.state, d.attempt, d.run_after, d.lease_owner,"
        "       d.lease_expires_at, r.status, r.error,"
        "       (SELECT json_agg(json_build_object('step', s.step_id, 'state', s.state,"
        "               'deliveries', s.deliveries, 'lease', s.lease_expires_at))"
        "        FROM remote_steps s WHERE s.run_id = r.id) AS remote"
        " FROM due_work d JOIN tasks t ON t.id = d.task_id"
        " LEFT JOIN runs r ON r.due_work_id = d.id AND r.attempt = d.attempt"
        " WHERE d.run_after <= %s AND d.state <> 'succeeded' ORDER BY d.id LIMIT 20",
        (end,),
    ).fetchall()
    return "\n".join(str(row) for row in rows)


def _listening_workers(db: Conn) -> int:
    """Workers' LISTEN connections: the only ones whose last statement is the question they
    ask on connecting (the API's own are in transactions, which end with a COMMIT)."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE '%%pg_notify(''pao_streams''%%'"
    ).fetchone()
    return int(row[0]) if row else 0


def _back(proc: Process, lost: str, back: str) -> bool:
    """The process said it lost the database, then that it has it again."""
    out = proc.output()
    at = out.rfind(lost)
    return at >= 0 and back in out[at:]


def _connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def test_a_primary_failover_under_load_loses_nothing_and_doubles_nothing(
    pair: pgpair.Pair, tmp_path: Path
) -> None:
    started = time.monotonic()
    asyncio.run(migrate(pair.url))
    pair.wait_replayed()
    token = new_token()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": pair.url,
        "PAO_LOG_LEVEL": "info",
        "PAO_ADMIN_TOKEN": token,
        # Leases outlast the outage (some seconds): a run in flight when the primary dies
        # ends on the new one, rather than timing out and being offered again.
        "PAO_LEASE_SECONDS": "30",
        "PAO_RETRY_BASE_SECONDS": "0",
        "PAO_SCHEDULER_TICK_MS": "200",
        "PAO_RATE_LIMIT_PER_MINUTE": "100000",  # the load's pace is the test's
    }
    env.pop("PAO_LISTEN_DATABASE_URL", None)  # LISTEN on the same multi-host URL
    env.pop("PAO_DATABASE_POOLER", None)
    api = Process(
        [sys.executable, "-m", "pao", "api"], {**env, "PAO_PORT": str(port)}, tmp_path / "api.log"
    )
    procs = [api] + [
        Process([sys.executable, "-m", "pao", name], env, tmp_path / f"{name}-{i}.log")
        for i, name in enumerate(BACKGROUND)
    ]
    background = procs[1:]
    base = f"http://127.0.0.1:{port}"
    load: Load | None = None
    claimants: list[Claimant] = []
    claiming = threading.Event()  # set: the claimants stop
    opened: list[Conn] = []  # closed at the end
    try:
        wait_ready(base, api)
        http = httpx.Client(base_url=base, headers=auth(token), timeout=30)

        def make(body: dict[str, Any]) -> dict[str, Any]:
            resp = http.post("/tasks", json=body)
            assert resp.status_code == 201, resp.text
            out: dict[str, Any] = resp.json()
            return out

        first: dict[uuid.UUID, datetime] = {}
        for i in range(CRON_TASKS):
            made = make(_task("cron", "* * * * *", f"cron {i}", WORK))
            first[uuid.UUID(made["id"])] = datetime.fromisoformat(made["next_run_at"])
        for s in RRULE_SECONDS:
            made = make(_task("rrule", f"FREQ=MINUTELY;BYSECOND={s}", f"rrule {s}", WORK))
            first[uuid.UUID(made["id"])] = datetime.fromisoformat(made["next_run_at"])
        on_ping = make(_task("event", "failover.ping", "on ping", WORK))["id"]
        by_hand = make(_task("event", "never.fired", "by hand", WORK))["id"]
        resp = http.post(
            "/task-types",
            json={
                "name": REMOTE_TYPE,
                "parameters_schema": {"type": "object"},
                # A claim whose answer is lost in the outage is offered again soon.
                "lease_seconds": 15,
            },
        )
        assert resp.status_code == 201, resp.text
        remote = make(_task("event", "never.fired", "remote", REMOTE))["id"]
        http.close()
        claimants = [Claimant(base, token, claiming) for _ in range(2)]
        for claimant in claimants:
            claimant.start()
        cron_minute = min(at for task, at in first.items() if at.second == 0)

        # A live stream, opened and left: the API now LISTENs too, and must do so again.
        with httpx.stream(
            "GET", f"{base}/tasks/{on_ping}/stream", headers=auth(token), timeout=30
        ) as stream:
            assert stream.status_code == 200, stream.read()

        load = Load(base, token, on_ping, by_hand, remote)
        load.start()
        with _connect(pair.primary.url) as old:
            until_running(procs, lambda: _flowing(old, load), "work of every kind to flow", 60)
            until_running(procs, lambda: _listening_workers(old) == 2, "the workers to LISTEN", 30)

        # The primary dies; nothing answers on its port any more, and the standby refuses
        # writes: every process sees the database gone.
        acknowledged = {k: load.ok(k) for k in ("event", "run_now", "remote", "once")}
        stopped_at = datetime.now(UTC)
        pair.primary.stop("immediate")
        until_running(procs, lambda: load.statuses[503] > 0, "a 503 from the API", 30)
        for p in background:
            until_logged(p, "database unavailable")
        # An rrule occurrence falls due while there is no primary.
        due_in_outage = stopped_at.replace(microsecond=0) + timedelta(seconds=6)
        until_running(
            procs, lambda: datetime.now(UTC) > due_in_outage, "a due time in the outage", 30
        )
        pair.standby.promote()
        promoted_at = datetime.now(UTC)

        # Every process finds the new primary by itself, and the load is served again.
        for p in background:
            back = partial(_back, p, "database unavailable", "database is back")
            until_running(procs, back, f"{p.log.name} to say the database is back", 60)
        until_running(
            procs,
            partial(_back, api, "stream listener lost the database", "stream listener is back"),
            "the API's stream listener back",
            60,
        )
        until_running(
            procs,
            lambda: all(load.ok(k) >= n + 3 for k, n in acknowledged.items()),
            "events, run_now, remote runs and one-offs acknowledged after the promotion",
            60,
        )
        new = _connect(pair.standby.url)
        opened.append(new)
        assert new.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        # Both workers LISTEN again, on the new primary.
        until_running(
            procs, lambda: _listening_workers(new) == 2, "the workers to LISTEN again", 30
        )
        # The cron minute has come (before or after the failover) and an rrule occurrence
        # after the promotion too.
        end = max(cron_minute, promoted_at + timedelta(seconds=5))
        until_running(procs, lambda: datetime.now(UTC) > end, "the cron minute", 70)
        load.stop.set()
        load.join(timeout=60)
        load_ended = datetime.now(UTC)
        expected = _expected(first, load_ended - timedelta(seconds=1))
        # The last one-offs fall due a few seconds after the load.
        settled = max([load_ended, *load.once.values()])
        try:
            until_running(
                procs,
                lambda: datetime.now(UTC) > settled and _all_ran(new, expected, settled),
                "every occurrence due and every acknowledged run to succeed",
                60,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nnot succeeded:\n{_unfinished(new, settled)}") from None
        claiming.set()
        for claimant in claimants:
            claimant.join(timeout=60)
        for proc in procs:  # a clean stop is part of the test
            code = proc.stop()
            # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
            clean = (0, -signal.SIGTERM) if proc is api else (0,)
            assert code in clean, (proc.proc.args, code, proc.output()[-3000:])
    finally:
        claiming.set()
        if load is not None:
            load.stop.set()
        for p in procs:
            p.kill()
        for conn in opened:
            conn.close()

    wall = time.monotonic() - started
    print(
        f"\nfailover test: {wall:.0f} s; statuses {dict(load.statuses)}; "
        f"acknowledged {len(load.events)} events, {len(load.runs)} run_now, "
        f"{len(load.remote_runs)} remote runs, "
        f"{len(load.once)} one-offs; outage {stopped_at:%H:%M:%S.%f} → {promoted_at:%H:%M:%S.%f}"
    )
    # Every request was answered: 2xx or, while there was no primary, 503; never a 500.
    assert load.unanswered == [], load.unanswered[:10]
    assert load.refused == [], load.refused[:10]
    assert set(load.statuses) <= OK | {503}, load.statuses
    assert [r for c in claimants for r in c.refused] == []

    with _connect(pair.standby.url) as new:
        # Everything the API acknowledged is on the new primary: each event stored and
        # dispatched, each run_now's run there, each one-off task there with its occurrence.
        events = new.execute(
            "SELECT count(*) FILTER (WHERE dispatched_at IS NOT NULL), count(*) FROM events"
            " WHERE id = ANY(%s::uuid[])",
            (load.events,),
        ).fetchone()
        assert events == (len(load.events), len(load.events))
        runs = new.execute(
            "SELECT count(*) FROM runs WHERE id = ANY(%s::uuid[])", (load.runs,)
        ).fetchone()
        assert runs == (len(load.runs),)
        once = new.execute(
            "SELECT count(*) FROM due_work WHERE task_id = ANY(%s::uuid[]) AND state = 'succeeded'",
            (list(load.once),),
        ).fetchone()
        assert once == (len(load.once),)
        # Each stored event (acknowledged, or committed as its answer was lost) fired the
        # event task exactly once.
        fired = new.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM due_work WHERE task_id = %s",
            (on_ping,),
        ).fetchone()
        stored = new.execute("SELECT count(*) FROM events WHERE type = 'failover.ping'").fetchone()
        assert stored is not None
        assert fired == (stored[0], stored[0])
        # No occurrence ran successfully twice; every one due materialised once and ended once.
        twice = new.execute(
            "SELECT due_work_id FROM runs WHERE status = 'succeeded' GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()
        assert twice == []
        assert_work_consistent(new, expected=expected, all_final=False)
        # Each remote step of an acknowledged run (and of any run whose answer was lost) was
        # completed once: one completion answered 200, none lost. A step handed out and
        # whose claim's answer was lost in the outage is offered again after its lease, so
        # `handed` may hold it twice; then one completion of it is a 409 at most.
        completed = Counter(
            (run, step) for c in claimants for run, step, code in c.completed if code == 200
        )
        assert set(completed.values()) == {1}, completed
        assert {(run, "render") for run in load.remote_runs} <= set(completed)
        steps = new.execute(
            "SELECT s.run_id::text, s.step_id, s.state FROM remote_steps s"
            " JOIN runs r ON r.id = s.run_id WHERE s.task_type = %s",
            (REMOTE_TYPE,),
        ).fetchall()
        assert {(run, step) for run, step, _ in steps} == set(completed)
        assert {state for _, _, state in steps} == {"succeeded"}
        handed = Counter(step for c in claimants for step in c.handed)
        print(
            f"remote steps: {len(steps)} done, {sum(handed.values()) - len(handed)} offered again"
        )
        # Work fell due while there was no primary, and ran after the promotion.
        in_outage = new.execute(
            "SELECT count(*) FROM due_work WHERE run_after BETWEEN %s AND %s",
            (stopped_at, promoted_at),
        ).fetchone()
        retried = new.execute("SELECT count(*) FROM due_work WHERE attempt > 1").fetchone()
        print(f"due in the outage: {in_outage}; occurrences run more than once: {retried}")
        assert in_outage is not None
        assert in_outage[0] > 0

    logs = {p.log.name: p.output() for p in procs}
    for name, text in logs.items():
        assert "Traceback" not in text, (name, text[-3000:])
