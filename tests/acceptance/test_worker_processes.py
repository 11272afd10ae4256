"""Real `pao worker` processes: killed, drained, and holding long steps."""

from __future__ import annotations

import itertools
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import pao_process, worker_id
from tests.helpers import auth, create_task, run_now, until, until_runs_succeeded


def _env(db_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "PAO_LOG_LEVEL": "info", **extra}


def _runs(db: psycopg.Connection[Any], task_id: str) -> list[tuple[int, str, str | None]]:
    return [
        (r[0], r[1], r[2])
        for r in db.execute(
            "SELECT attempt, status, worker_id FROM runs WHERE task_id = %s ORDER BY attempt",
            (task_id,),
        ).fetchall()
    ]


def _succeeded_by(db: psycopg.Connection[Any]) -> list[str]:
    """The worker of each run that succeeded."""
    return [r[0] for r in db.execute("SELECT worker_id FROM runs WHERE status = 'succeeded'")]


def test_a_killed_worker_s_run_is_finished_by_another_after_the_lease(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    env = _env(
        db_url, PAO_LEASE_SECONDS="3", PAO_RETRY_BASE_SECONDS="0", PAO_SCHEDULER_TICK_MS="200"
    )
    task_id = create_task(
        client,
        writer_token,
        {"id": "work", "uses": "sleep", "with": {"seconds": 1.5}},
        {"id": "done", "uses": "log", "with": {"message": "finished"}},
    )
    with (
        pao_process("scheduler", env, tmp_path / "scheduler.log"),
        pao_process("worker", env, tmp_path / "a.log") as a,
    ):
        run_id = run_now(client, writer_token, task_id)
        until(
            lambda: _runs(db, task_id) == [(1, "running", _runs(db, task_id)[0][2])], what="start"
        )
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        with pao_process("worker", env, tmp_path / "b.log"):
            until(
                lambda: any(s == "succeeded" for _, s, _ in _runs(db, task_id)),
                what="the second worker to finish",
            )
    runs = _runs(db, task_id)
    assert [(attempt, status) for attempt, status, _ in runs] == [(1, "failed"), (2, "succeeded")]
    assert runs[0][2] != runs[1][2]  # two different workers
    assert db.execute("SELECT state FROM due_work").fetchall() == [("succeeded",)]
    first = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert "lost its lease" in first["error"]
    assert_work_consistent(db)


def test_sigterm_drains_short_steps_and_hands_back_long_ones(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    env = _env(db_url, PAO_SHUTDOWN_GRACE="2", PAO_WORKER_CONCURRENCY="2")
    short = create_task(client, writer_token, {"id": "s", "uses": "sleep", "with": {"seconds": 1}})
    long = create_task(client, writer_token, {"id": "l", "uses": "sleep", "with": {"seconds": 30}})
    with pao_process("worker", env, tmp_path / "w.log") as w:
        run_now(client, writer_token, short)
        run_now(client, writer_token, long)
        until(
            lambda: [s for _, s, _ in _runs(db, short) + _runs(db, long)] == ["running"] * 2,
            what="both running",
        )
        started = time.monotonic()
        assert w.stop() == 0
        took = time.monotonic() - started
    assert took < 6, took
    assert [(a, s) for a, s, _ in _runs(db, short)] == [(1, "succeeded")]
    # The long one was handed back with its attempt unspent, ready for another worker.
    assert [(a, s) for a, s, _ in _runs(db, long)] == [(1, "queued")]
    state = db.execute(
        "SELECT state, attempt, lease_owner FROM due_work WHERE task_id = %s", (long,)
    ).fetchone()
    assert state == ("queued", 1, None)
    assert db.execute(
        "SELECT count(*) FROM process_heartbeats WHERE kind = 'worker'"
    ).fetchone() == (0,)
    assert_work_consistent(db, all_final=False)


def test_a_step_longer_than_the_lease_runs_once(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    env = _env(db_url, PAO_LEASE_SECONDS="3", PAO_SCHEDULER_TICK_MS="200")
    task_id = create_task(
        client, writer_token, {"id": "long", "uses": "sleep", "with": {"seconds": 7}}
    )
    with (
        pao_process("scheduler", env, tmp_path / "s.log"),
        pao_process("worker", env, tmp_path / "a.log"),
        pao_process("worker", env, tmp_path / "b.log"),
    ):
        run_now(client, writer_token, task_id)
        until(lambda: any(s == "succeeded" for _, s, _ in _runs(db, task_id)), what="success")
    assert [(a, s) for a, s, _ in _runs(db, task_id)] == [(1, "succeeded")]
    assert_work_consistent(db)


def _span(db: psycopg.Connection[Any], task_id: str) -> list[tuple[Any, Any, str]]:
    return [
        (r[0], r[1], r[2])
        for r in db.execute(
            "SELECT started_at, finished_at, status FROM runs WHERE task_id = %s ORDER BY attempt",
            (task_id,),
        ).fetchall()
    ]


def test_a_concurrency_key_stays_held_until_its_killed_holder_s_lease_runs_out(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    env = _env(
        db_url, PAO_LEASE_SECONDS="3", PAO_RETRY_BASE_SECONDS="0", PAO_SCHEDULER_TICK_MS="200"
    )
    holder = create_task(
        client,
        writer_token,
        {"id": "hold", "uses": "sleep", "with": {"seconds": 60}},
        concurrency_key="modem",
        max_retries=0,
    )
    waiter = create_task(
        client,
        writer_token,
        {"id": "quick", "uses": "sleep", "with": {"seconds": 0.2}},
        concurrency_key="modem",
    )
    with (
        pao_process("scheduler", env, tmp_path / "scheduler.log"),
        pao_process("worker", env, tmp_path / "a.log") as a,
    ):
        run_now(client, writer_token, holder)
        until(lambda: [s for _, s, _ in _runs(db, holder)] == ["running"], what="the holder")
        run_now(client, writer_token, waiter)
        with pao_process("worker", env, tmp_path / "b.log"):
            time.sleep(1.5)  # two workers with free slots, yet the key is taken
            assert [s for _, s, _ in _runs(db, waiter)] == ["queued"]
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(timeout=10)
            until(
                lambda: [s for _, s, _ in _runs(db, waiter)] == ["succeeded"],
                what="the waiter to run once the dead holder's lease ran out",
            )
    [(_held_from, held_until, held_status)] = _span(db, holder)
    [(ran_from, _, _)] = _span(db, waiter)
    assert held_status == "failed"  # rescued after the lease, no retries left
    assert ran_from >= held_until
    assert_work_consistent(db)


def _attempt_running(db: psycopg.Connection[Any], task_id: str, attempt: int) -> bool:
    return (attempt, "running") in [(a, s) for a, s, _ in _runs(db, task_id)]


def test_a_pipeline_that_kills_its_worker_every_time_stops_after_max_retries(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Each attempt's worker dies mid-step (SIGKILL as soon as it starts the run, as an
    out-of-memory kill would); the occurrence is retried by the lease rescue, and after
    `max_retries` retries it ends `failed` instead of taking workers down forever."""
    env = _env(
        db_url, PAO_LEASE_SECONDS="3", PAO_RETRY_BASE_SECONDS="0", PAO_SCHEDULER_TICK_MS="200"
    )
    task_id = create_task(
        client,
        writer_token,
        {"id": "doomed", "uses": "sleep", "with": {"seconds": 60}},
        max_retries=2,
        backoff_strategy="fixed",
    )
    with pao_process("scheduler", env, tmp_path / "scheduler.log"):
        run_now(client, writer_token, task_id)
        for attempt in (1, 2, 3):
            with pao_process("worker", env, tmp_path / f"w{attempt}.log") as w:
                until(partial(_attempt_running, db, task_id, attempt), what=f"attempt {attempt}")
                w.proc.send_signal(signal.SIGKILL)
                w.proc.wait(timeout=10)
        until(
            lambda: db.execute("SELECT state FROM due_work").fetchall() == [("failed",)],
            what="the rescue to give up",
        )
    runs = client.get("/runs", params={"task_id": task_id}, headers=auth(writer_token)).json()
    assert sorted((r["attempt"], r["status"]) for r in runs["items"]) == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
    ]
    last = max(runs["items"], key=lambda r: r["attempt"])
    assert "no retries left (max_retries=2)" in last["error"]
    assert db.execute("SELECT count(*) FROM runs WHERE task_id = %s", (task_id,)).fetchone() == (3,)
    assert_work_consistent(db)


def test_cancel_stops_a_run_on_a_worker_process(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    task_id = create_task(
        client,
        writer_token,
        {"id": "long", "uses": "sleep", "with": {"seconds": 60}},
        {"id": "never", "uses": "log", "with": {"message": "must not run"}},
    )
    with pao_process("worker", _env(db_url), tmp_path / "worker.log"):
        run_id = run_now(client, writer_token, task_id)
        until(lambda: [s for _, s, _ in _runs(db, task_id)] == ["running"], what="the start")
        resp = client.post(f"/runs/{run_id}/cancel", headers=auth(writer_token))
        assert resp.status_code == 202, resp.text
        # The worker sees the request on its next lease renewal (every second).
        until(
            lambda: [s for _, s, _ in _runs(db, task_id)] == ["cancelled"],
            timeout=10,
            what="the worker to stop the run",
        )
    run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert [s["id"] for s in run["steps"]] == ["long"]
    assert db.execute("SELECT state FROM due_work").fetchall() == [("cancelled",)]
    logs = client.get(f"/runs/{run_id}/logs", headers=auth(writer_token)).json()["items"]
    assert all("must not run" not in line["message"] for line in logs)
    assert_work_consistent(db)


def test_two_worker_processes_never_overlap_runs_of_one_concurrency_key(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    step = {"id": "use", "uses": "sleep", "with": {"seconds": 0.2}}
    tasks = [create_task(client, writer_token, step, concurrency_key="printer") for _ in range(2)]
    env = _env(db_url, PAO_WORKER_CONCURRENCY="4")
    with (
        pao_process("worker", env, tmp_path / "a.log") as a,
        pao_process("worker", env, tmp_path / "b.log") as b,
    ):
        workers = {worker_id(db, a): a, worker_id(db, b): b}
        for _ in range(6):
            for task_id in tasks:
                run_now(client, writer_token, task_id)
        until(lambda: len(_succeeded_by(db)) >= 4, what="a third of the runs")
        # The worker that ends a run is awake first and often takes the key's next run too.
        # If one worker took every run so far, it stops (finishing the run it holds) and the
        # other takes the rest from it: both take part, and the handover is between processes.
        if len(takers := set(_succeeded_by(db))) == 1:
            assert workers[takers.pop()].stop() == 0
        until_runs_succeeded(db, 12, timeout=60)
    spans = db.execute(
        "SELECT started_at, finished_at, worker_id FROM runs ORDER BY started_at"
    ).fetchall()
    assert len({worker for _, _, worker in spans}) == 2  # both workers took part
    for (_, ended, _), (began, _, _) in itertools.pairwise(spans):
        assert began >= ended, "two runs of one concurrency key overlapped"
    assert_work_consistent(db)
