"""A run's row is claimed and ended in place: both rewrites are HOT updates.

Each non-HOT rewrite of a run writes an entry in all four of `runs`' indexes;
on a busy worker that was the largest part of the database's time per run.
Migration 0010 leaves room on each page for the row to grow; this holds the
schema to it, with a real worker claiming and ending one-step runs.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from tests.background import worker
from tests.helpers import new_agent, until

RUNS = 300
NOOP = '{"pipeline": [{"id": "noop", "uses": "sleep", "with": {"seconds": 0}}]}'


def _updates(db: psycopg.Connection[Any]) -> tuple[int, int]:
    db.execute("SELECT pg_stat_clear_snapshot()")
    row = db.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'runs'"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_claims_and_ends_rewrite_a_run_in_place(db_url: str, db: psycopg.Connection[Any]) -> None:
    new_agent(db_url, ["admin"], name="owner")
    db.execute(
        "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, payload) "
        "VALUES ((SELECT id FROM agents WHERE name = 'owner'), 'noop', 'event', 'noop', 'UTC', "
        "%s::jsonb)",
        (NOOP,),
    )
    # The shape of what the scheduler and run_now write: an occurrence, its work, its run.
    db.execute(
        "WITH d AS ("
        " INSERT INTO due_work (task_id, scheduled_for, run_after, reason)"
        " SELECT t.id, now() - i * interval '1 ms', now() - i * interval '1 ms', 'run_now'"
        " FROM tasks t CROSS JOIN generate_series(1, %s) i"
        " RETURNING id, task_id, scheduled_for)"
        " INSERT INTO runs (due_work_id, task_id, scheduled_for)"
        " SELECT id, task_id, scheduled_for FROM d",
        (RUNS,),
    )
    before = _updates(db)
    with worker(db_url, worker_concurrency=64):
        until(
            lambda: (
                db.execute("SELECT count(*) FROM runs WHERE status = 'succeeded'").fetchone()
                == (RUNS,)
            ),
            "every run succeeded",
        )
    # The worker's connections report their counts as they close.
    deadline = time.monotonic() + 10
    while _updates(db)[0] - before[0] < 2 * RUNS and time.monotonic() < deadline:
        time.sleep(0.1)
    updates, hot = (after - start for after, start in zip(_updates(db), before, strict=True))
    assert updates == 2 * RUNS  # a claim and an end each
    assert hot >= 0.9 * updates, f"only {hot} of {updates} updates of runs were HOT"
