"""A real `pao worker` meeting real database errors, most of them not outages.

Triggers make PostgreSQL itself refuse the worker's claim, its lease renewals, the offer of
a remote step or the end of its runs, with the SQLSTATE a statement timeout, a revoked
privilege, an internal error or a shutdown raise, and a table lock makes every statement
hang. Only the faulty worker's connections (application_name) meet them; the scheduler
beside it rescues as in production. Each test checks that the worker lives on, that the
promises hold (a run whose lease was lost writes nothing more; two attempts never
overlap), and that SIGTERM still ends it in time.
"""

from __future__ import annotations

import functools
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import Process, pao_process, worker_id
from tests.helpers import auth, create_task, run_now, until

Conn = psycopg.Connection[Any]
APP = "pao-faulty-worker"
GRACE = 3
# The worker's own bound on closing after the grace (worker.service.CLOSE_SECONDS), and
# the time a Python process takes to start its exit.
CLOSE = 5.0

_until = functools.partial(until, timeout=60)

FAULTS = """
CREATE TABLE test_faults (point text PRIMARY KEY, sqlstate text NOT NULL);

CREATE FUNCTION test_fault(p text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE code text;
BEGIN
    IF current_setting('application_name') <> '%(app)s' THEN
        RETURN;
    END IF;
    SELECT sqlstate INTO code FROM test_faults WHERE point = p;
    IF code IS NOT NULL THEN
        RAISE EXCEPTION 'injected fault at %%', p USING ERRCODE = code;
    END IF;
END $$;

CREATE FUNCTION test_due_work_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'queued' AND NEW.state = 'running' THEN
        PERFORM test_fault('claim');
    ELSIF OLD.state = 'running' AND NEW.state = 'running'
          AND NEW.lease_expires_at IS DISTINCT FROM OLD.lease_expires_at THEN
        PERFORM test_fault('renew');
    ELSIF OLD.state = 'running' AND NEW.state <> 'running' AND NEW.attempt = OLD.attempt THEN
        PERFORM test_fault('end');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER test_due_work_fault BEFORE UPDATE ON due_work
FOR EACH ROW EXECUTE FUNCTION test_due_work_fault();

CREATE SEQUENCE test_offer_tries;  -- counts the faulty worker's tries (not rolled back)

CREATE FUNCTION test_offer_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') = '%(app)s' THEN
        PERFORM nextval('test_offer_tries');
    END IF;
    PERFORM test_fault('offer');
    RETURN NEW;
END $$;

CREATE TRIGGER test_offer_fault BEFORE INSERT ON remote_steps
FOR EACH ROW EXECUTE FUNCTION test_offer_fault();

CREATE FUNCTION test_log_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM test_fault('log');
    RETURN NEW;
END $$;

CREATE TRIGGER test_log_fault BEFORE INSERT ON run_logs
FOR EACH ROW EXECUTE FUNCTION test_log_fault();

-- An update that changes the column TG_ARGV[1] meets the fault point TG_ARGV[0].
CREATE FUNCTION test_change_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF to_jsonb(NEW) -> TG_ARGV[1] IS DISTINCT FROM to_jsonb(OLD) -> TG_ARGV[1] THEN
        PERFORM test_fault(TG_ARGV[0]);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER test_charge_fault BEFORE UPDATE ON runs
FOR EACH ROW EXECUTE FUNCTION test_change_fault('charge', 'cost');

CREATE TRIGGER test_condition_fault BEFORE UPDATE ON tasks
FOR EACH ROW EXECUTE FUNCTION test_change_fault('condition', 'condition_state');
""".replace("%(app)s", APP).replace("%%", "%")


def _env(db_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_LEVEL": "info",
        "PAO_LEASE_SECONDS": "3",
        "PAO_RETRY_BASE_SECONDS": "0",
        "PAO_SCHEDULER_TICK_MS": "200",
        "PAO_SHUTDOWN_GRACE": str(GRACE),
        **extra,
    }


@pytest.fixture
def faults(db: Conn) -> Conn:
    db.execute(FAULTS)
    return db


def _inject(db: Conn, point: str, sqlstate: str) -> None:
    db.execute(
        "INSERT INTO test_faults VALUES (%s, %s) ON CONFLICT (point) DO UPDATE"
        " SET sqlstate = EXCLUDED.sqlstate",
        (point, sqlstate),
    )


def _heal(db: Conn, point: str) -> None:
    db.execute("DELETE FROM test_faults WHERE point = %s", (point,))


def _runs(db: Conn, task_id: str) -> list[tuple[int, str]]:
    rows = db.execute(
        "SELECT attempt, status FROM runs WHERE task_id = %s ORDER BY attempt", (task_id,)
    ).fetchall()
    return [(int(a), str(s)) for a, s in rows]


def _work(db: Conn, task_id: str) -> list[tuple[int, str]]:
    rows = db.execute("SELECT attempt, state FROM due_work WHERE task_id = %s", (task_id,))
    return [(int(a), str(s)) for a, s in rows.fetchall()]


def _ride_out(db: Conn, worker: Process, run_id: str, point: str, warning: str) -> None:
    """The faulty worker, given the run `run_id` while `point` is refused for now, logs
    `warning` and keeps the run going (a run that ends fails the test at once); healed, the
    run succeeds, and the worker stops in time."""
    worker_id(db, worker)

    def status() -> list[str]:
        rows = db.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchall()
        return [str(r[0]) for r in rows]

    _until(
        lambda: warning in worker.output() or status() not in (["queued"], ["running"]),
        f"the worker to say {warning!r}",
    )
    assert status() == ["running"], worker.output()[-3000:]
    _heal(db, point)
    _until(lambda: status() == ["succeeded"], "the run to succeed")
    _stop_in_time(worker)


def _offer_tries(db: Conn) -> int:
    row = db.execute("SELECT last_value, is_called FROM test_offer_tries").fetchone()
    return int(row[0]) if row is not None and row[1] else 0


def _logged(db: Conn, task_id: str, message: str) -> list[int]:
    """The attempts of the task's runs that logged `message`."""
    rows = db.execute(
        "SELECT r.attempt FROM run_logs l JOIN runs r ON r.id = l.run_id"
        " WHERE r.task_id = %s AND l.message = %s ORDER BY 1",
        (task_id, message),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _hanging(db: Conn) -> bool:
    """Whether one of the faulty worker's statements waits for a lock."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND wait_event_type = 'Lock'",
        (APP,),
    ).fetchone()
    return row is not None and row[0] > 0


def _faulty_worker(db_url: str, tmp_path: Path, **extra: str) -> Any:
    return pao_process("worker", _env(db_url, PGAPPNAME=APP, **extra), tmp_path / "worker.log")


def _stop_in_time(worker: Process) -> float:
    """SIGTERM; the seconds it took the worker to exit, which must be within its bounds."""
    started = time.monotonic()
    code = worker.stop()
    took = time.monotonic() - started
    assert code == 0, worker.output()[-3000:]
    assert took < GRACE + CLOSE, (took, worker.output()[-3000:])
    return took


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "sqlstate",
    [
        "57014",  # query_canceled (a statement timeout): an OperationalError, not an outage
        "42501",  # insufficient_privilege: a ProgrammingError
        "XX000",  # internal_error
    ],
)
def test_a_refused_claim_is_retried_and_the_worker_lives_on(
    sqlstate: str,
    client: TestClient,
    writer_token: str,
    db_url: str,
    faults: Conn,
    tmp_path: Path,
) -> None:
    task_id = create_task(
        client, writer_token, {"id": "hi", "uses": "log", "with": {"message": "hi"}}
    )
    _inject(faults, "claim", sqlstate)
    with _faulty_worker(db_url, tmp_path) as worker:
        worker_id(faults, worker)
        run_now(client, writer_token, task_id)
        _until(lambda: "claiming work failed" in worker.output(), "the claim to fail")
        assert worker.proc.poll() is None, worker.output()[-3000:]
        assert _runs(faults, task_id) == [(1, "queued")]
        _heal(faults, "claim")
        _until(lambda: _runs(faults, task_id) == [(1, "succeeded")], "the run to succeed")
        assert "claiming work works again" in worker.output()
        _stop_in_time(worker)
    assert_work_consistent(faults)


@pytest.mark.timeout(120)
def test_refused_renewals_stop_the_run_before_its_lease_ends_and_the_rescue_runs_it_once(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    """Attempt 1 cannot renew its lease: the worker stops it by its own clock, writing
    nothing more for it, before the scheduler hands it out again; once renewals work,
    a later attempt finishes, and the worker is still the same process."""
    task_id = create_task(
        client,
        writer_token,
        {"id": "start", "uses": "log", "with": {"message": "started"}},
        {"id": "work", "uses": "sleep", "with": {"seconds": 4}},
        {"id": "done", "uses": "log", "with": {"message": "finished"}},
        max_retries=5,
    )
    with (
        pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"),
        _faulty_worker(db_url, tmp_path) as worker,
    ):
        worker_id(faults, worker)
        _inject(faults, "renew", "XX000")
        run_now(client, writer_token, task_id)
        _until(lambda: "renewing leases failed" in worker.output(), "a renewal to fail")
        _until(lambda: "lease lost; stopped" in worker.output(), "the worker to give up the run")
        _heal(faults, "renew")
        _until(lambda: any(s == "succeeded" for _, s in _runs(faults, task_id)), "a later attempt")
        assert worker.proc.poll() is None
        _stop_in_time(worker)
    runs = _runs(faults, task_id)
    assert len(runs) >= 2, runs
    assert runs[-1][1] == "succeeded", runs
    assert all(s == "failed" for _, s in runs[:-1]), runs
    # Only the attempt that succeeded got past its step: a lost one wrote nothing more.
    assert _logged(faults, task_id, "finished") == [runs[-1][0]]
    assert_work_consistent(faults)


@pytest.mark.timeout(120)
def test_an_end_that_cannot_be_written_leaves_the_run_to_its_lease(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    """The run's end is refused: the worker gives the run up (no slot, no renewals) and
    carries on; after the lease the scheduler retries it, and the retry succeeds."""
    task_id = create_task(
        client,
        writer_token,
        {"id": "hi", "uses": "log", "with": {"message": "ran"}},
        max_retries=3,
    )
    with (
        pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"),
        _faulty_worker(db_url, tmp_path) as worker,
    ):
        worker_id(faults, worker)
        _inject(faults, "end", "57014")
        run_now(client, writer_token, task_id)
        _until(lambda: "its end was not recorded" in worker.output(), "the end to be refused")
        _heal(faults, "end")
        _until(lambda: (2, "succeeded") in _runs(faults, task_id), "the retry to succeed")
        assert worker.proc.poll() is None
        _stop_in_time(worker)
    assert _runs(faults, task_id) == [(1, "failed"), (2, "succeeded")]
    assert _logged(faults, task_id, "ran") == [1, 2]  # one after the other, never together
    assert_work_consistent(faults)


@pytest.mark.timeout(120)
def test_a_log_line_refused_for_now_is_written_when_the_database_is_back(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    """A `log` step meets a database going away (as in a failover): the line is written
    again until it goes through, and the run, allowed no retry, succeeds. Before, the step
    failed with "The database cannot be reached right now", and the run with it."""
    step = {"id": "hi", "uses": "log", "with": {"message": "through"}}
    task_id = create_task(client, writer_token, step, max_retries=0)
    _inject(faults, "log", "57P01")
    with _faulty_worker(db_url, tmp_path) as worker:
        run_id = run_now(client, writer_token, task_id)
        _ride_out(faults, worker, run_id, "log", "cannot write a log line yet")
    assert _logged(faults, task_id, "through") == [1]
    assert_work_consistent(faults)


def test_a_charge_refused_for_now_is_made_when_the_database_is_back(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    """A paid step's charge meets a database going away: it is made again until it goes
    through, once, and the run, allowed no retry, succeeds. Before, the step failed with
    "The database cannot be reached right now", and the run with it."""
    step = {"id": "paid", "uses": "log", "with": {"message": "paid for"}}
    task_id = create_task(client, writer_token, step, max_retries=0)
    _inject(faults, "charge", "57P01")
    with _faulty_worker(db_url, tmp_path, PAO_TOOL_COSTS="log=1.5") as worker:
        run_id = run_now(client, writer_token, task_id)
        _ride_out(faults, worker, run_id, "charge", "cannot charge a step yet")
    cost = faults.execute("SELECT cost FROM runs WHERE task_id = %s", (task_id,)).fetchall()
    assert cost == [(Decimal("1.5"),)]
    spent = faults.execute(
        "SELECT s.spent FROM agent_spending s JOIN tasks t ON t.created_by = s.agent_id"
        " WHERE t.id = %s AND s.period = 'day'",
        (task_id,),
    ).fetchall()
    assert spent == [(Decimal("1.5"),)]
    assert _logged(faults, task_id, "paid for") == [1]
    assert_work_consistent(faults)


def test_a_charge_refused_for_longer_than_its_step_may_take_fails_the_step(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    """Tried again only as long as the step may take: then the step fails with why, never
    having started, and nothing is charged."""
    step = {"id": "paid", "uses": "log", "with": {"message": "paid for"}, "timeout_seconds": 2}
    task_id = create_task(client, writer_token, step, max_retries=0)
    _inject(faults, "charge", "57014")
    with _faulty_worker(db_url, tmp_path, PAO_TOOL_COSTS="log=1.5") as worker:
        worker_id(faults, worker)
        run_now(client, writer_token, task_id)
        _until(lambda: _runs(faults, task_id) == [(1, "failed")], "the run to fail")
        row = faults.execute("SELECT error, cost FROM runs WHERE task_id = %s", (task_id,))
        assert row.fetchall() == [("step paid: could not be charged within 2s", None)]
        assert "cannot charge a step yet" in worker.output()
        assert worker.proc.poll() is None
        _stop_in_time(worker)
    assert faults.execute("SELECT count(*) FROM agent_spending").fetchone() == (0,)
    assert _logged(faults, task_id, "paid for") == []
    assert_work_consistent(faults)


def test_a_condition_refused_for_now_is_saved_when_the_database_is_back(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    """A condition's state meets a database going away after the first step: it is saved
    again until it goes through, and the rest of the run follows. Before, the run failed."""
    first = {"id": "look", "uses": "log", "with": {"message": "looked"}}
    then = {"id": "act", "uses": "log", "with": {"message": "acted"}}
    payload = {"pipeline": [first, then], "condition": '${task.title} == "seed"'}
    task_id = create_task(
        client,
        writer_token,
        schedule_kind="condition",
        schedule_expr="0 0 1 1 *",
        payload=payload,
        title="seed",
        max_retries=0,
    )
    _inject(faults, "condition", "57P01")
    with _faulty_worker(db_url, tmp_path) as worker:
        run_id = run_now(client, writer_token, task_id)
        _ride_out(faults, worker, run_id, "condition", "cannot save its condition yet")
    state = faults.execute("SELECT condition_state FROM tasks WHERE id = %s", (task_id,))
    assert state.fetchall() == [(True,)]
    assert _logged(faults, task_id, "acted") == [1]
    assert_work_consistent(faults)


def _remote_type(client: TestClient, admin_token: str) -> str:
    """A task type whose steps remote services do: the worker offers them."""
    kind = {"name": "db.errors.render", "parameters_schema": {"type": "object"}}
    resp = client.post("/task-types", json=kind, headers=auth(admin_token))
    assert resp.status_code == 201, resp.text
    return str(kind["name"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "sqlstate",
    [
        "57P01",  # admin_shutdown: the database going away, as in a failover
        "57014",  # query_canceled (a statement timeout): a failure for now, not an outage
    ],
)
def test_an_offer_that_fails_for_now_is_tried_again_under_the_same_lease(
    sqlstate: str,
    client: TestClient,
    admin_token: str,
    writer_token: str,
    db_url: str,
    faults: Conn,
    tmp_path: Path,
) -> None:
    """The offer of a remote step fails for longer than the lease: the worker tries it again
    while it renews the lease, and once the offer goes through the run waits for its step,
    still its first attempt (no retries allowed: a lost lease would fail it), offered once.
    Before, the failed offer ended the run's task silently and the lease ran out."""
    step = {"id": "render", "uses": _remote_type(client, admin_token)}
    task_id = create_task(client, writer_token, step, max_retries=0)
    _inject(faults, "offer", sqlstate)
    with (
        pao_process("scheduler", _env(db_url), tmp_path / "scheduler.log"),
        _faulty_worker(db_url, tmp_path) as worker,
    ):
        worker_id(faults, worker)
        run_now(client, writer_token, task_id)
        # Five tries are 3.7 s apart at least: longer than the 3 s lease.
        _until(lambda: _offer_tries(faults) >= 5, "the offer to be tried five times")
        assert "cannot offer remote step render yet" in worker.output()
        assert _runs(faults, task_id) == [(1, "running")]
        _heal(faults, "offer")
        _until(lambda: _work(faults, task_id) == [(1, "waiting")], "the run to wait for its step")
        assert _runs(faults, task_id) == [(1, "running")]  # a waiting run stays running
        offered = faults.execute(
            "SELECT s.step_id, s.state FROM remote_steps s JOIN runs r ON r.id = s.run_id"
            " WHERE r.task_id = %s",
            (task_id,),
        ).fetchall()
        assert offered == [("render", "queued")]
        assert "lease lost" not in worker.output()
        assert worker.proc.poll() is None
        _stop_in_time(worker)
    assert_work_consistent(faults, all_final=False)  # the run waits for its remote step


@pytest.mark.timeout(120)
def test_an_offer_refused_for_longer_than_its_step_may_take_fails_the_step(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    db_url: str,
    faults: Conn,
    tmp_path: Path,
) -> None:
    """Tried again only as long as the step may take (its timeout): then the step fails
    with why, and the run with it, instead of the worker holding it, lease renewed, for
    ever."""
    step = {"id": "render", "uses": _remote_type(client, admin_token), "timeout_seconds": 2}
    task_id = create_task(client, writer_token, step, max_retries=0)
    _inject(faults, "offer", "57014")
    with _faulty_worker(db_url, tmp_path) as worker:
        worker_id(faults, worker)
        run_now(client, writer_token, task_id)
        _until(lambda: _runs(faults, task_id) == [(1, "failed")], "the run to fail")
        row = faults.execute("SELECT error FROM runs WHERE task_id = %s", (task_id,)).fetchone()
        assert row is not None
        error = str(row[0])
        assert error.startswith("step render: could not be offered in its time"), error
        assert _offer_tries(faults) >= 2
        assert faults.execute("SELECT count(*) FROM remote_steps").fetchone() == (0,)
        assert worker.proc.poll() is None
        _stop_in_time(worker)
    assert_work_consistent(faults)


@pytest.mark.timeout(120)
def test_sigterm_ends_the_worker_in_time_while_every_statement_hangs(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    """Another transaction holds the queue and the heartbeats locked: claims, renewals,
    the hand-back and the goodbye all hang. SIGTERM still ends the worker within the
    grace and its close; the run it held is handed on by its lease."""
    task_id = create_task(
        client,
        writer_token,
        {"id": "long", "uses": "sleep", "with": {"seconds": 60}},
        max_retries=3,
    )
    with (
        _faulty_worker(db_url, tmp_path) as worker,
        psycopg.connect(db_url) as locker,
    ):
        worker_id(faults, worker)
        run_now(client, writer_token, task_id)
        _until(lambda: _runs(faults, task_id) == [(1, "running")], "the run to start")
        locker.execute("LOCK TABLE due_work, runs, process_heartbeats IN ACCESS EXCLUSIVE MODE")
        _until(functools.partial(_hanging, faults), "the worker's statements to hang")
        _stop_in_time(worker)
        locker.rollback()
    assert "stopped" in worker.output()


@pytest.mark.timeout(120)
def test_sigterm_hands_back_in_time_when_the_hand_back_is_refused(
    client: TestClient, writer_token: str, db_url: str, faults: Conn, tmp_path: Path
) -> None:
    task_id = create_task(
        client, writer_token, {"id": "long", "uses": "sleep", "with": {"seconds": 60}}
    )
    with _faulty_worker(db_url, tmp_path) as worker:
        worker_id(faults, worker)
        run_now(client, writer_token, task_id)
        _until(lambda: _runs(faults, task_id) == [(1, "running")], "the run to start")
        _inject(faults, "end", "XX000")
        _stop_in_time(worker)
    assert "its end was not recorded" in worker.output()
    # Still running by the books until its lease runs out (then the scheduler hands it on).
    assert _runs(faults, task_id) == [(1, "running")]
