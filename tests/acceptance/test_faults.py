"""Faults on real processes: a silent network cut, foreign locks, a starved pool, a
scheduler killed mid-batch, every worker killed at once. Each test ends with the same
SQL check of the promises (tests/acceptance/faults.py)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.rows import dict_row

from tests.acceptance.faults import assert_work_consistent, silent_proxy
from tests.acceptance.procs import Process, pao_process, worker_id
from tests.helpers import create_task, run_now, until

Conn = psycopg.Connection[Any]

# Short leases keep these tests quick: a lost worker is noticed within seconds.
FAST = {
    "PAO_LEASE_SECONDS": "3",
    "PAO_RETRY_BASE_SECONDS": "0",
    "PAO_SCHEDULER_TICK_MS": "200",
    "PAO_LOG_LEVEL": "info",
}


# These waits span a lease or two and a restart: a minute, not the default half.
_until = functools.partial(until, timeout=60)

QUICK: dict[str, Any] = {"id": "quick", "uses": "log", "with": {"message": "hi"}}


def _env(db_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **FAST, "DATABASE_URL": db_url, **extra}


def _rows(db: Conn, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _runs(db: Conn, task_id: str) -> list[dict[str, Any]]:
    return _rows(
        db,
        "SELECT id, attempt, status, worker_id, error, finished_at, steps FROM runs"
        " WHERE task_id = %s ORDER BY attempt",
        (task_id,),
    )


def _all_ended(db: Conn) -> bool:
    return not _rows(db, "SELECT id FROM due_work WHERE state IN ('queued', 'running')")


# --------------------------------------------------------------------------- 1. silent cut


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cut", ["mid-step", "while-ending"])
def test_a_worker_cut_off_silently_loses_its_run_and_its_late_writes_are_refused(
    cut: str, client: TestClient, writer_token: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    """Worker A reaches PostgreSQL through a proxy that goes silent for longer than the
    lease; the scheduler rescues the run and worker B finishes it. `mid-step`: A notices
    by its own clock that its lease ran out and stops the step. `while-ending`: A's step
    ends during the cut, so its end waits to be written. Either way, when the network
    heals, whatever A still sends is fenced out and attempt 1 keeps the rescue's ending."""
    # The cut comes once A's first step has written its line: A has started the run (a
    # claim alone is not enough, as a run whose task read is cut off never starts).
    started = {"id": "start", "uses": "log", "with": {"message": "started"}}
    a_lease: dict[str, str] = {}
    if cut == "mid-step":
        steps = [
            started,
            {"id": "work", "uses": "sleep", "with": {"seconds": 6}},
            {"id": "done", "uses": "log", "with": {"message": "finished the work"}},
        ]
    else:
        # The step must end during the cut, and before A's own clock gives its lease up
        # (lease - 1 s after the cut at the earliest, renewals being a second apart): a
        # longer lease for A leaves room on both sides of the two-second step.
        steps = [started, {"id": "work", "uses": "sleep", "with": {"seconds": 2}}]
        a_lease = {"PAO_LEASE_SECONDS": "5"}
    task_id = create_task(client, writer_token, *steps)
    with (
        silent_proxy(db_url) as proxy,
        pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"),
        pao_process("worker", _env(proxy.url, **a_lease), tmp_path / "a.log") as a,
    ):
        a_id = worker_id(db, a)
        run_now(client, writer_token, task_id)
        _until(
            lambda: _rows(
                db,
                "SELECT 1 FROM run_logs l JOIN runs r ON r.id = l.run_id"
                " WHERE r.task_id = %s AND r.attempt = 1 AND l.message = 'started'",
                (task_id,),
            ),
            "worker A to start the run",
        )
        proxy.cut()
        if cut == "mid-step":
            # A hears nothing from the database, not even an error: it must give the run
            # up by its own clock once its lease has run out, and stop the step.
            _until(
                lambda: "lease lost; stopped" in a.output(), "worker A to notice it lost the lease"
            )
        with pao_process("worker", _env(db_url), tmp_path / "b.log") as b:
            b_id = worker_id(db, b)
            _until(
                lambda: any(r["status"] == "succeeded" for r in _runs(db, task_id)),
                "worker B to finish the run",
            )
            before = _runs(db, task_id)
            proxy.restore()
            # A is back: it beats again and its held writes reach the database.
            restored = _rows(db, "SELECT now() AS t")[0]["t"]
            _until(
                lambda: bool(
                    _rows(
                        db,
                        "SELECT 1 FROM process_heartbeats WHERE process_id = %s AND seen_at > %s",
                        (a_id, restored),
                    )
                ),
                "worker A to beat again after the cut",
            )
            if cut == "while-ending":
                _until(
                    lambda: "its end was not recorded" in a.output(),
                    "worker A's late end to be refused",
                )
            # With B stopped, A alone takes new work: it recovered without help.
            after_id = create_task(client, writer_token, QUICK)
            assert b.stop() == 0
            run_now(client, writer_token, after_id)
            _until(
                lambda: [r["status"] for r in _runs(db, after_id)] == ["succeeded"],
                "worker A to run new work after the cut",
            )
    runs = _runs(db, task_id)
    assert runs == before  # nothing A sent late changed either attempt
    assert [(r["attempt"], r["status"], r["worker_id"]) for r in runs] == [
        (1, "failed", a_id),
        (2, "succeeded", b_id),
    ]
    assert "lost its lease" in runs[0]["error"]
    assert _runs(db, after_id)[0]["worker_id"] == a_id
    if cut == "mid-step":
        # A never logged the second step of its attempt: the step was stopped (and a log
        # line written after the lease was lost would have been refused anyway).
        lines = _rows(
            db,
            "SELECT r.attempt FROM run_logs l JOIN runs r ON r.id = l.run_id"
            " WHERE r.task_id = %s AND l.message = 'finished the work'",
            (task_id,),
        )
        assert [line["attempt"] for line in lines] == [2]
    assert_work_consistent(db)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _due_work_of(db: Conn, task_id: str) -> list[dict[str, Any]]:
    return _rows(db, "SELECT * FROM due_work WHERE task_id = %s ORDER BY id", (task_id,))


# --------------------------------------------------------------------------- 2. foreign locks


def test_a_long_transaction_holding_a_due_work_row_lock_does_not_stop_other_work(
    client: TestClient, writer_token: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    """Another connection opens a transaction, keeps its snapshot and locks one queued
    `due_work` row. Claims skip the locked row instead of waiting on it; everything else,
    scheduled and run-now work alike, runs meanwhile; the locked occurrence runs once
    that transaction ends."""
    locked = create_task(client, writer_token, QUICK)
    others = [create_task(client, writer_token, QUICK) for _ in range(8)]
    run_now(client, writer_token, locked)
    [row] = _due_work_of(db, locked)
    with psycopg.connect(db_url) as other:  # not autocommit: one long transaction
        other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT count(*) FROM runs")  # takes the snapshot, kept until the end
        other.execute("SELECT id FROM due_work WHERE id = %s FOR UPDATE", (row["id"],))
        with (
            pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"),
            pao_process("worker", _env(db_url), tmp_path / "worker.log") as w,
        ):
            worker_id(db, w)
            # Scheduled work is materialised and run under the long transaction too.
            at = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
            once = create_task(
                client, writer_token, QUICK, schedule_kind="once", schedule_expr=_iso(at)
            )
            for task_id in others:
                run_now(client, writer_token, task_id)
            _until(
                lambda: all(
                    [r["status"] for r in _runs(db, t)] == ["succeeded"] for t in [*others, once]
                ),
                "the other work to run past the locked row",
            )
            assert [r["status"] for r in _runs(db, locked)] == ["queued"]
            other.rollback()
            _until(
                lambda: [r["status"] for r in _runs(db, locked)] == ["succeeded"],
                "the locked occurrence to run once released",
            )
    assert_work_consistent(db, expected={uuid.UUID(once): [at]})
    assert " ERROR " not in w.output(), w.output()


# --------------------------------------------------------------------------- 3. small pool


def test_a_worker_pool_smaller_than_its_concurrency_neither_stalls_nor_loses_leases(
    client: TestClient, writer_token: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    """Six runs at once on a single pooled connection, each step longer than the lease and
    logging as it goes: the runs share the pool with lease renewal, claims and the
    writer, and every one succeeds on its first attempt."""
    steps = [
        {"id": "before", "uses": "log", "with": {"message": "starting"}},
        {"id": "work", "uses": "sleep", "with": {"seconds": 4}},
        {"id": "after", "uses": "log", "with": {"message": "done"}},
    ]
    tasks = [create_task(client, writer_token, *steps) for _ in range(6)]
    env = _env(db_url, PAO_WORKER_CONCURRENCY="6", PAO_WORKER_POOL_SIZE="1")
    with (
        pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"),
        pao_process("worker", env, tmp_path / "worker.log") as w,
    ):
        worker_id(db, w)
        for task_id in tasks:
            run_now(client, writer_token, task_id)
        _until(
            lambda: len(_rows(db, "SELECT id FROM runs WHERE status = 'running'")) == 6,
            "all six runs to run at once",
        )
        _until(lambda: _all_ended(db), "the runs to end")
    for task_id in tasks:
        assert [(r["attempt"], r["status"]) for r in _runs(db, task_id)] == [(1, "succeeded")]
    lines = _rows(db, "SELECT message, count(*) AS n FROM run_logs GROUP BY 1 ORDER BY 1")
    assert lines == [{"message": "done", "n": 6}, {"message": "starting", "n": 6}]
    assert "lease lost" not in w.output()
    assert "rescued" not in (tmp_path / "scheduler.log").read_text()
    assert_work_consistent(db)


# --------------------------------------------------------------------------- 4. scheduler


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_scheduler_killed_while_materialising_a_large_batch_loses_and_repeats_nothing(
    client: TestClient, writer_token: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    """Thousands of one-off and minutely tasks fall due in the same second. The scheduler
    is killed with SIGKILL between two of its batches' commits; a new one finishes the
    job: every task has its occurrence exactly once, with one record and one run."""
    # Both kinds fire at the same second, about 18 s from now (the rrule once a minute).
    at = (datetime.now(UTC) + timedelta(seconds=18)).replace(microsecond=0)
    once = create_task(client, writer_token, QUICK, schedule_kind="once", schedule_expr=_iso(at))
    minutely = create_task(
        client,
        writer_token,
        QUICK,
        schedule_kind="rrule",
        schedule_expr=f"FREQ=MINUTELY;BYSECOND={at.second}",
        timezone="UTC",
    )
    clones = {once: 2999, minutely: 1999}
    columns = sql.SQL(", ").join(
        sql.Identifier(r["column_name"])
        for r in _rows(
            db,
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'tasks' AND is_generated = 'NEVER' ORDER BY ordinal_position",
        )
    )
    for template, n in clones.items():
        # Copies of the template, column for column, but for a new id and title.
        db.execute(
            sql.SQL(
                "INSERT INTO tasks ({cols}) SELECT {cols} FROM ("
                " SELECT (jsonb_populate_record(t, jsonb_build_object("
                "   'id', gen_random_uuid(), 'title', t.title || ' ' || i))).*"
                " FROM tasks t, generate_series(1, %s) i WHERE t.id = %s) AS copy"
            ).format(cols=columns),
            (n, template),
        )
    tasks = _rows(db, "SELECT id, schedule_kind, next_run_at FROM tasks")
    assert len(tasks) == 5000
    assert {t["next_run_at"] for t in tasks} == {at}
    total = len(tasks)

    writing = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND backend_xid IS NOT NULL"
    )

    def materialised() -> int:
        return int(_rows(db, "SELECT count(*) AS n FROM due_work")[0]["n"])

    first = Process(
        [sys.executable, "-m", "pao", "scheduler"], _env(db_url), tmp_path / "first.log"
    )
    try:
        # One batch committed and the next one writing, not yet committed.
        _until(
            lambda: materialised() > 0 and bool(_rows(db, writing)),
            "a batch to be half written",
        )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    finally:
        first.kill()
    killed_at = materialised()
    # The test is only worth something if the kill landed mid-way.
    assert 0 < killed_at < total, killed_at
    with pao_process("scheduler", _env(db_url), tmp_path / "second.log") as second:
        _until(lambda: materialised() >= total, "the second scheduler to finish the job")
        assert second.stop() == 0
    expected = {t["id"]: [at] for t in tasks}
    assert_work_consistent(db, expected=expected, all_final=False)
    # Anything beyond the first fire is a later minute of a minutely task, queued at its time.
    extra = _rows(
        db,
        "SELECT t.schedule_kind, d.scheduled_for FROM due_work d JOIN tasks t ON t.id = d.task_id"
        " WHERE d.scheduled_for <> %s",
        (at,),
    )
    assert all(
        e["schedule_kind"] == "rrule" and (e["scheduled_for"] - at) % timedelta(minutes=1) == 0
        for e in extra
    ), extra[:5]
    records = _rows(
        db,
        "SELECT d.id FROM due_work d LEFT JOIN occurrences o"
        " ON o.due_work_id = d.id AND o.decision = 'queued' AND o.nominal_at = d.scheduled_for"
        " GROUP BY d.id HAVING count(o.id) <> 1",
    )
    assert records == []
    assert _rows(db, "SELECT count(*) AS n FROM runs")[0]["n"] == materialised()
    left = _rows(db, "SELECT schedule_kind, status, next_run_at FROM tasks")
    assert all(t["next_run_at"] is None for t in left if t["schedule_kind"] == "once")
    assert all(t["next_run_at"] > at for t in left if t["schedule_kind"] == "rrule")


# --------------------------------------------------------------------------- 5. all workers


def test_every_worker_killed_then_a_new_one_finishes_everything(
    client: TestClient, writer_token: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    """Two workers are killed with SIGKILL while running four steps, with four more
    occurrences queued behind them; a worker started afterwards runs the queued ones and,
    once the dead workers' leases run out, retries the four they were running."""
    slow = [
        create_task(client, writer_token, {"id": "work", "uses": "sleep", "with": {"seconds": 2}})
        for _ in range(8)
    ]
    env = _env(db_url, PAO_WORKER_CONCURRENCY="2")
    with pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"):
        with (
            pao_process("worker", env, tmp_path / "a.log") as a,
            pao_process("worker", env, tmp_path / "b.log") as b,
        ):
            dead = {worker_id(db, a), worker_id(db, b)}
            for task_id in slow:
                run_now(client, writer_token, task_id)
            _until(
                lambda: len(_rows(db, "SELECT id FROM runs WHERE status = 'running'")) == 4,
                "both workers to be busy",
            )
            for p in (a, b):
                p.proc.send_signal(signal.SIGKILL)
            for p in (a, b):
                p.proc.wait(timeout=10)
        interrupted = {
            r["task_id"] for r in _rows(db, "SELECT task_id FROM runs WHERE status = 'running'")
        }
        assert len(interrupted) == 4
        with pao_process("worker", _env(db_url), tmp_path / "c.log") as c:
            survivor = worker_id(db, c)
            _until(lambda: _all_ended(db), "the new worker to finish everything")
    for task_id in slow:
        runs = [(r["attempt"], r["status"], r["worker_id"]) for r in _runs(db, task_id)]
        if uuid.UUID(task_id) in interrupted:
            assert [(n, status) for n, status, _ in runs] == [(1, "failed"), (2, "succeeded")]
            assert runs[0][2] in dead
            assert runs[1][2] == survivor
        else:
            assert runs == [(1, "succeeded", survivor)]
    assert_work_consistent(db)


@pytest.mark.parametrize("step_seconds", [5, 1], ids=["outlasts-the-lease", "ends-locked"])
def test_a_row_lock_on_a_running_occurrence_does_not_hold_up_the_others(
    step_seconds: float,
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: Conn,
    tmp_path: Path,
) -> None:
    """Another connection locks the `due_work` row of one running occurrence for longer
    than the lease. The worker's other runs keep their leases and their ends are written:
    they succeed on their first attempt. The locked one cannot be renewed (its step is
    stopped when its lease runs out) or cannot have its end written (the lease decides);
    once the lock is released it is retried, and ends once."""
    step = {"id": "work", "uses": "sleep", "with": {"seconds": step_seconds}}
    tasks = [create_task(client, writer_token, step) for _ in range(4)]
    with (
        pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"),
        pao_process("worker", _env(db_url), tmp_path / "worker.log") as w,
    ):
        worker_id(db, w)
        for task_id in tasks:
            run_now(client, writer_token, task_id)
        _until(
            lambda: len(_rows(db, "SELECT id FROM runs WHERE status = 'running'")) == 4,
            "all four to run",
        )
        [row] = _due_work_of(db, tasks[0])
        with psycopg.connect(db_url) as other:
            other.execute("SELECT id FROM due_work WHERE id = %s FOR UPDATE", (row["id"],))
            _until(
                lambda: all(
                    [r["status"] for r in _runs(db, t)] == ["succeeded"] for t in tasks[1:]
                ),
                "the other three to finish while the row is locked",
            )
            other.rollback()
        _until(lambda: _all_ended(db), "the locked one to end")
    for task_id in tasks[1:]:
        assert [(r["attempt"], r["status"]) for r in _runs(db, task_id)] == [(1, "succeeded")]
    assert_work_consistent(db)
