"""A run's row is claimed and ended in place: both rewrites are HOT updates.

Each non-HOT rewrite of a run writes an entry in all four of `runs`' indexes;
on a busy worker that was the largest part of the database's time per run.
Migration 0010 leaves room on each page for the row to grow; this holds the
schema to it, with a real worker claiming and ending one-step runs.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tests.background import worker
from tests.helpers import queue_noop_runs, until, until_runs_succeeded

RUNS = 300


def _updates(db: psycopg.Connection[Any]) -> tuple[int, int]:
    db.execute("SELECT pg_stat_clear_snapshot()")
    row = db.execute(
        "SELECT sum(n_tup_upd)::bigint, sum(n_tup_hot_upd)::bigint FROM pg_stat_user_tables "
        "WHERE relid IN (SELECT relid FROM pg_partition_tree('runs'))"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_claims_and_ends_rewrite_a_run_in_place(db_url: str, db: psycopg.Connection[Any]) -> None:
    queue_noop_runs(db_url, db, RUNS)
    before = _updates(db)
    with worker(db_url, worker_concurrency=64):
        until_runs_succeeded(db, RUNS)
    # The worker's connections report their counts as they close.
    until(lambda: _updates(db)[0] - before[0] >= 2 * RUNS, "the updates to be counted", 10)
    updates, hot = (after - start for after, start in zip(_updates(db), before, strict=True))
    assert updates == 2 * RUNS  # a claim and an end each
    assert hot >= 0.9 * updates, f"only {hot} of {updates} updates of runs were HOT"
