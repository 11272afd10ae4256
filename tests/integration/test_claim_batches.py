"""A worker with more free slots than a claim takes claims batch after batch.

One long claim of every free slot would start nothing until it returned; in
batches of CLAIM_BATCH the runs of one claim start while the next is claimed.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tests.background import worker
from tests.helpers import queue_noop_runs, until_runs_succeeded
from worker.claims import CLAIM_BATCH

RUNS = 300


def test_a_worker_claims_a_batch_at_a_time(db_url: str, db: psycopg.Connection[Any]) -> None:
    assert RUNS > 2 * CLAIM_BATCH
    queue_noop_runs(db_url, db, RUNS)
    with worker(db_url, worker_concurrency=RUNS):
        until_runs_succeeded(db, RUNS)
    # A claim stamps its runs with the start of its transaction: runs that started at the
    # same instant were claimed together.
    sizes = [
        n for (n,) in db.execute("SELECT count(*) FROM runs GROUP BY started_at ORDER BY 1 DESC")
    ]
    assert sum(sizes) == RUNS
    # All were due at once, with a slot each: the first claims were full batches.
    assert sizes[:2] == [CLAIM_BATCH, CLAIM_BATCH], sizes
