"""The real `pao scheduler` process: replicas, downtime, signals and start-up checks.

Tasks are created through the HTTP API of a real `pao api` process, then one or
more `python -m pao scheduler` processes run against the same database and
everything is checked with SQL afterwards. There is no worker here, so the
due work they queue stays `queued`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from pao.schedule import Schedule, parse_schedule
from pao.zones import get_zone
from tests.acceptance.procs import Process, free_port, pao, until_running, wait_ready
from tests.helpers import auth, new_agent, soak_seconds, until

Conn = psycopg.Connection[tuple[object, ...]]

TICK_MS = 200
LOOKAHEAD = 5
# Longer than this and an occurrence is late (scheduler.plan.LATE_AFTER).
LATE_AFTER = timedelta(seconds=5)
PAYLOAD: dict[str, Any] = {"pipeline": [{"id": "hello", "uses": "log", "with": {"message": "hi"}}]}


# --------------------------------------------------------------------------- helpers


def _env(db_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_LEVEL": "info",
        "PAO_SCHEDULER_TICK_MS": str(TICK_MS),
        "PAO_LOOKAHEAD_SECONDS": str(LOOKAHEAD),
        **extra,
    }


def _scheduler(db_url: str, log: Path, lookahead: int = LOOKAHEAD) -> Process:
    env = _env(db_url, PAO_LOOKAHEAD_SECONDS=str(lookahead))
    return Process([sys.executable, "-m", "pao", "scheduler"], env, log)


def _rows(db: Conn, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


@contextmanager
def _api(db_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    """A real `pao api` process and a client authenticated as an agent that may write tasks."""
    token = new_agent(db_url, ["tasks:read", "tasks:write"], name="scheduler-tests")
    port = free_port()
    api = Process(
        [sys.executable, "-m", "pao", "api"],
        _env(db_url, PAO_PORT=str(port)),
        tmp_path / "api.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api)
        with httpx.Client(base_url=base, headers=auth(token), timeout=10) as client:
            yield client
    finally:
        api.kill()


def _create(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"payload": PAYLOAD, "timezone": "UTC", **fields}
    resp = client.post("/tasks", json=body)
    assert resp.status_code == 201, resp.text
    task: dict[str, Any] = resp.json()
    return task


def _create_all(client: httpx.Client, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create these tasks, four at a time (the API serves them side by side); in order."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda fields: _create(client, **fields), bodies))


def _schedule(row: dict[str, Any]) -> Schedule:
    """The task's schedule exactly as the scheduler parses it (with the stored created_at)."""
    return parse_schedule(
        row["schedule_kind"], row["schedule_expr"], row["timezone"], created_at=row["created_at"]
    )


def _fires(schedule: Schedule, first: datetime, last: datetime) -> list[datetime]:
    """`first` and every later fire time up to `last` inclusive."""
    out: list[datetime] = []
    t: datetime | None = first
    while t is not None and t <= last:
        out.append(t)
        t = schedule.next_after(t)
    return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _assert_clean_log(proc: Process) -> None:
    out = proc.output()
    assert "Traceback" not in out, out
    assert " ERROR " not in out, out
    assert " WARNING " not in out, out


# --------------------------------------------------------------------------- replicas

# From the last task created to the moment the horizon reaches the second minute of the
# minutely tasks: time for the schedulers to start, asserted below.
LIVE_MARGIN = 25.0  # three processes starting on a busy 2-core machine take up to ~15 s
# The odd once tasks, due around the burst (seconds from it).
ODD_OFFSETS = (-9.0, -6.0, -3.75, 1.0, 2.0)


@pytest.mark.slow
@pytest.mark.timeout(290 + soak_seconds())
@pytest.mark.parametrize("replicas", [2, 3])
def test_two_and_three_schedulers_never_double_fire(
    replicas: int, db_url: str, db: Conn, tmp_path: Path
) -> None:
    """Replicas over minutely, two-minutely and three-minutely cron and rrule tasks in four
    zones and a burst of 300 one-off tasks due in the same second, with a few more around it.

    The run ends once every occurrence due up to just after the burst is queued: the
    minutely tasks have fired twice by then, the second time (and the burst) met live. The
    look-ahead is stretched so that the horizon reaches that minute a few seconds after the
    schedulers start rather than up to a minute later; with `PAO_SOAK_SECONDS` the schedulers
    keep the usual look-ahead and go on that much longer.
    """
    soak = soak_seconds()
    began = time.monotonic()
    created: list[dict[str, Any]] = []
    with _api(db_url, tmp_path) as client:
        zones = ["UTC", "Europe/Chisinau", "America/New_York", "Asia/Kolkata"]
        for i in range(40):
            created.append(
                _create(
                    client,
                    title=f"minutely {i}",
                    schedule_kind="cron",
                    schedule_expr="* * * * *",
                    timezone=zones[i % 4],
                    priority=1 + i % 9,
                )
            )
        for i in range(8):
            created.append(
                _create(
                    client,
                    title=f"every two {i}",
                    schedule_kind="cron",
                    schedule_expr="*/2 * * * *",
                )
            )
        for i in range(16):
            created.append(
                _create(
                    client,
                    title=f"rrule minutely {i}",
                    schedule_kind="rrule",
                    schedule_expr="FREQ=MINUTELY",
                    timezone=zones[i % 4],
                )
            )
        for i in range(4):
            # INTERVAL's phase comes from DTSTART, i.e. from created_at: the scheduler and
            # the API must agree on it.
            created.append(
                _create(
                    client,
                    title=f"rrule every three {i}",
                    schedule_kind="rrule",
                    schedule_expr="FREQ=MINUTELY;INTERVAL=3",
                )
            )
        # Every minutely task fires first at most a minute from now, then at `second`.
        second = max(
            datetime.fromisoformat(t["next_run_at"])
            for t in created
            if t["schedule_expr"] in ("* * * * *", "FREQ=MINUTELY")
        ) + timedelta(minutes=1)
        # The burst: 300 one-off tasks all due in the same second, just after that minute.
        burst = second + timedelta(seconds=3)
        created += _create_all(
            client,
            [
                {
                    "title": f"burst {i}",
                    "schedule_kind": "once",
                    "schedule_expr": _iso(burst),
                    "priority": 1 + i % 9,
                }
                for i in range(300)
            ],
        )
        # A handful due at other seconds, written in other ways.
        at = [burst + timedelta(seconds=s) for s in ODD_OFFSETS]
        local = at[0].astimezone(get_zone("Europe/Chisinau"))
        odd = [
            ("Europe/Chisinau", local.replace(tzinfo=None).isoformat()),  # local wall time
            ("UTC", at[1].astimezone(get_zone("Asia/Kolkata")).isoformat()),
            ("UTC", _iso(at[2])),  # with milliseconds
            ("America/New_York", _iso(at[3])),
            ("UTC", _iso(at[4])),
        ]
        for i, (zone, expr) in enumerate(odd):
            created.append(
                _create(
                    client,
                    title=f"odd {i}",
                    schedule_kind="once",
                    schedule_expr=expr,
                    timezone=zone,
                )
            )
    first_run = {t["id"]: datetime.fromisoformat(t["next_run_at"]) for t in created}
    assert len(first_run) == len(created) == 373
    assert sorted({first_run[t["id"]] for t in created if t["title"].startswith("odd")}) == at

    made = time.monotonic()
    # The horizon (now + look-ahead) reaches `second` LIVE_MARGIN seconds from now.
    lookahead = LOOKAHEAD
    if not soak:
        left = (second - datetime.now(UTC)).total_seconds()
        lookahead = max(LOOKAHEAD, int(left - LIVE_MARGIN))
    # Everything due up to here is what the run waits for.
    last = max(at[-1], burst)

    scheds = [
        _scheduler(db_url, tmp_path / f"scheduler{i}.log", lookahead) for i in range(replicas)
    ]
    try:

        def all_up() -> bool:
            beating = _rows(db, "SELECT pid FROM process_heartbeats WHERE kind = 'scheduler'")
            running = all("running" in p.output() for p in scheds)
            return running and {r["pid"] for r in beating} == {p.proc.pid for p in scheds}

        until_running(scheds, all_up, "every scheduler to run and beat")
        up_at = datetime.now(UTC)
        up = time.monotonic()
        # The second minute and the burst must be met live, not caught up after the fact.
        assert up_at < second - timedelta(seconds=lookahead + 1), (up_at, second, lookahead)

        tasks = {r["id"]: r for r in _rows(db, "SELECT * FROM tasks")}
        due = sum(len(_fires(_schedule(r), first_run[str(i)], last)) for i, r in tasks.items())

        def all_queued() -> bool:
            [row] = _rows(
                db, "SELECT count(*) AS n FROM due_work WHERE scheduled_for <= %s", (last,)
            )
            return bool(row["n"] >= due and time.monotonic() - up >= soak)

        wait = (last - datetime.now(UTC)).total_seconds() - lookahead + 30 + soak
        until_running(scheds, all_queued, f"the {due} occurrences due by {last}", wait)

        stop = datetime.now(UTC)
        print(
            f"created in {made - began:.1f}s, look-ahead {lookahead}s, up after"
            f" {up - made:.1f}s, all {due} queued {time.monotonic() - up:.1f}s later"
        )
        for p in scheds:
            p.proc.send_signal(signal.SIGTERM)
        codes = [p.proc.wait(timeout=20) for p in scheds]
        stopped = datetime.now(UTC)
    finally:
        for p in scheds:
            p.kill()

    assert codes == [0] * replicas, [p.output() for p in scheds]
    for p in scheds:
        assert "running" in p.output(), p.output()
        assert "stopped" in p.output(), p.output()
        _assert_clean_log(p)
    assert _rows(db, "SELECT * FROM process_heartbeats WHERE kind = 'scheduler'") == []

    # 1. No occurrence twice (the unique constraint guarantees it; checked anyway).
    assert (
        _rows(
            db,
            "SELECT task_id, scheduled_for FROM due_work GROUP BY 1, 2 HAVING count(*) > 1",
        )
        == []
    )

    # 2. Every task fired exactly at the times its schedule names: all that was waited for
    # and each time up to a second before the stop (further by as much as the look-ahead
    # was stretched) must be there; later ones may be, if a scheduler reached them.
    tasks = {r["id"]: r for r in _rows(db, "SELECT * FROM tasks")}
    work: dict[Any, list[datetime]] = {}
    for r in _rows(db, "SELECT task_id, scheduled_for FROM due_work ORDER BY scheduled_for"):
        work.setdefault(r["task_id"], []).append(r["scheduled_for"])
    assert set(work) <= set(tasks)
    must_until = max(last, stop + timedelta(seconds=lookahead - LOOKAHEAD - 1))
    may_until = stopped + timedelta(seconds=lookahead + 1)
    total = 0
    for task_id, row in tasks.items():
        first = first_run[str(task_id)]
        expected = _fires(_schedule(row), first, may_until)
        must = [t for t in expected if t <= must_until]
        got = work.get(task_id, [])
        assert [t for t in got if t <= must_until] == must, (row["title"], got, must)
        extra = [t for t in got if t > must_until]
        assert set(extra) <= set(expected), (row["title"], extra, expected)
        total += len(got)
        if row["schedule_kind"] == "once":
            assert got == [first], row["title"]
            # Nothing more to fire. It stays active while its run is queued (a worker finishes
            # it); only a once task with nothing queued is completed by the scheduler.
            assert row["next_run_at"] is None, row
            assert row["status"] in ("active", "completed"), row
        else:
            # Still active, and next_run_at is the first fire time not yet queued (an
            # INTERVAL=3 rule may not have fired at all yet).
            assert row["status"] == "active", row
            assert row["next_run_at"] == (_schedule(row).next_after(got[-1]) if got else first)
        if row["title"].startswith("burst"):
            assert got == [burst]
    assert total > len(created)  # the recurring ones fired more than once each
    minutely = [i for i, r in tasks.items() if r["schedule_expr"] in ("* * * * *", "FREQ=MINUTELY")]
    assert all(len(work[i]) >= 2 for i in minutely), "a minutely task fired less than twice"

    # 3. Each occurrence: one queued row with exactly one run (attempt 1) and one record.
    bad_work = _rows(
        db,
        """
        SELECT d.id, d.state, d.reason, d.attempt, count(r.id) AS runs,
               min(r.attempt) AS run_attempt, bool_and(r.scheduled_for = d.scheduled_for) AS same
        FROM due_work d LEFT JOIN runs r ON r.due_work_id = d.id
        GROUP BY d.id
        HAVING d.state <> 'queued' OR d.reason <> 'schedule' OR d.attempt <> 1
            OR d.run_after <> d.scheduled_for OR count(r.id) <> 1 OR min(r.attempt) <> 1
            OR NOT bool_and(r.scheduled_for = d.scheduled_for AND r.task_id = d.task_id
                            AND r.status = 'queued')
        """,
    )
    assert bad_work == []
    bad_records = _rows(
        db,
        """
        SELECT d.id, count(o.id) AS records
        FROM due_work d
        LEFT JOIN occurrences o
          ON o.due_work_id = d.id AND o.decision = 'queued'
         AND o.task_id = d.task_id AND o.nominal_at = d.scheduled_for
        GROUP BY d.id
        HAVING count(o.id) <> 1
        """,
    )
    assert bad_records == []
    # Nothing was late, so nothing was missed, coalesced or anything else.
    decisions = _rows(db, "SELECT decision, count(*) AS n FROM occurrences GROUP BY decision")
    assert decisions == [{"decision": "queued", "n": total}]
    runs = _rows(db, "SELECT count(*) AS n FROM runs")[0]["n"]
    assert runs == total


# --------------------------------------------------------------------------- downtime


def _last_fire_at_or_before(schedule: Schedule, moment: datetime) -> datetime:
    t = schedule.next_after(moment - timedelta(hours=1))
    assert t is not None
    assert t <= moment
    while (n := schedule.next_after(t)) is not None and n <= moment:
        t = n
    return t


def test_scheduler_catches_up_after_downtime_by_misfire_policy(
    db_url: str, db: Conn, tmp_path: Path
) -> None:
    specs = {
        "coalesce": ("coalesce", 300),
        "skip": ("skip", 300),
        "all": ("all", 300),
        "grace60": ("coalesce", 60),
    }
    with _api(db_url, tmp_path) as client:
        ids = {
            name: _create(
                client,
                title=name,
                schedule_kind="cron",
                schedule_expr="* * * * *",
                misfire_policy=policy,
                misfire_grace_seconds=grace,
            )["id"]
            for name, (policy, grace) in specs.items()
        }

    # Start the scheduler well inside a minute, so that no fire time lies near the
    # late (5 s) or grace (60 s, 300 s) boundaries of the moment it catches up.
    until(lambda: 8 <= datetime.now(UTC).second <= 38, "a moment well inside a minute", 60)

    # Ten minutes of downtime: next_run_at goes back to the fire time ten minutes ago.
    rows = {r["title"]: r for r in _rows(db, "SELECT * FROM tasks")}
    schedules = {name: _schedule(rows[name]) for name in specs}
    old: dict[str, datetime] = {}
    now = datetime.now(UTC)
    for name in specs:
        old[name] = _last_fire_at_or_before(schedules[name], now - timedelta(minutes=10))
        db.execute("UPDATE tasks SET next_run_at = %s WHERE id = %s", (old[name], ids[name]))

    sched = _scheduler(db_url, tmp_path / "scheduler.log")
    try:

        def caught_up() -> bool:
            behind = _rows(
                db,
                "SELECT id FROM tasks WHERE id = ANY(%s::uuid[]) AND next_run_at <= now()",
                (list(ids.values()),),
            )
            return not behind

        until_running([sched], caught_up, "the tasks to be caught up")
        started = time.monotonic()
        assert sched.stop() == 0, sched.output()
        assert time.monotonic() - started < 15
    finally:
        sched.kill()
    _assert_clean_log(sched)

    records: dict[str, list[dict[str, Any]]] = {}
    for name in specs:
        records[name] = _rows(
            db,
            "SELECT o.nominal_at, o.decision, o.due_work_id, o.decided_at, o.detail,"
            "       d.scheduled_for AS work_for"
            " FROM occurrences o LEFT JOIN due_work d ON d.id = o.due_work_id"
            " WHERE o.task_id = %s ORDER BY o.nominal_at",
            (ids[name],),
        )
    # The catch-up happened in one tick, one transaction: its time is the scheduler's "now".
    caught = {r["decided_at"] for rs in records.values() for r in rs if r["nominal_at"] <= now}
    assert len(caught) == 1, caught
    ref = caught.pop()
    assert 8 <= ref.astimezone(UTC).second <= 50, ref  # away from every boundary

    for name, (policy, grace) in specs.items():
        rs = records[name]
        task = _rows(db, "SELECT next_run_at, status FROM tasks WHERE id = %s", (ids[name],))[0]
        assert task["status"] == "active"
        # Every nominal time from the old next_run_at on has exactly one record, no gap.
        expected_times = _fires(schedules[name], old[name], task["next_run_at"])[:-1]
        assert [r["nominal_at"] for r in rs] == expected_times, name
        assert len(expected_times) >= 10

        late = [r for r in rs if r["nominal_at"] < ref - LATE_AFTER]
        on_time = [r for r in rs if r["nominal_at"] >= ref - LATE_AFTER]
        within = [r for r in late if r["nominal_at"] >= ref - timedelta(seconds=grace)]
        older = [r for r in late if r["nominal_at"] < ref - timedelta(seconds=grace)]
        assert len(late) >= 10
        assert len(older) >= 5
        assert len(within) == (5 if grace == 300 else 1), (name, within)

        assert {r["decision"] for r in older} == {"missed"}, name
        assert all(r["due_work_id"] is None for r in older)
        assert all("misfire_grace_seconds" in r["detail"] for r in older), older
        for r in on_time:  # queued at their own time (if within the look-ahead)
            assert r["decision"] == "queued", r
            assert r["work_for"] == r["nominal_at"], r

        if policy == "skip":
            assert {r["decision"] for r in within} == {"missed"}
            assert all(r["due_work_id"] is None for r in within)
        elif policy == "all":
            assert {r["decision"] for r in within} == {"queued"}
            assert all(r["work_for"] == r["nominal_at"] for r in within)
        else:
            *coalesced, kept = within
            assert kept["decision"] == "queued"
            assert kept["work_for"] == kept["nominal_at"]
            assert all(r["decision"] == "coalesced" for r in coalesced), coalesced
            assert all(r["due_work_id"] == kept["due_work_id"] for r in coalesced), coalesced

        # due_work holds exactly the queued occurrences, each with one first run.
        queued_times = [r["nominal_at"] for r in rs if r["decision"] == "queued"]
        work = _rows(
            db,
            "SELECT d.scheduled_for, count(r.id) AS runs, min(r.attempt) AS attempt"
            " FROM due_work d LEFT JOIN runs r ON r.due_work_id = d.id"
            " WHERE d.task_id = %s GROUP BY d.id ORDER BY d.scheduled_for",
            (ids[name],),
        )
        assert [w["scheduled_for"] for w in work] == queued_times, name
        assert all(w["runs"] == 1 and w["attempt"] == 1 for w in work), work


# --------------------------------------------------------------------------- signals


def test_scheduler_sigterm_is_clean_and_heartbeats(db_url: str, db: Conn, tmp_path: Path) -> None:
    sched = _scheduler(db_url, tmp_path / "scheduler.log")
    try:

        def beats() -> list[dict[str, Any]]:
            return _rows(
                db,
                "SELECT *, seen_at > now() - interval '10 seconds' AS fresh"
                " FROM process_heartbeats WHERE kind = 'scheduler'",
            )

        until_running([sched], lambda: any(b["fresh"] for b in beats()), "a heartbeat")
        [beat] = beats()
        assert beat["pid"] == sched.proc.pid
        assert beat["process_id"] in sched.output()  # "scheduler <id> running"
        # It keeps beating (every few seconds), not just once at start.
        until_running(
            [sched],
            lambda: any(b["seen_at"] > beat["seen_at"] for b in beats()),
            "a second heartbeat",
            15,
        )

        started = time.monotonic()
        sched.proc.send_signal(signal.SIGTERM)
        code = sched.proc.wait(timeout=15)
        took = time.monotonic() - started
    finally:
        sched.kill()
    assert code == 0, sched.output()
    assert took < 15
    assert f"scheduler {beat['process_id']} stopped" in sched.output()
    _assert_clean_log(sched)
    assert _rows(db, "SELECT * FROM process_heartbeats") == []


@pytest.fixture
def blank_db(db_url: str) -> str:
    """A database with nothing in it: drop the migrated schema the fixture gave us."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return db_url


def test_scheduler_refuses_an_unmigrated_database(blank_db: str) -> None:
    refused = pao("scheduler", env=_env(blank_db))
    assert refused.returncode != 0
    assert "pao migrate" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
