"""Pruning history: whole monthly partitions first, then what is left in small batches.

Runs, their logs and the decision records live in monthly partitions (version_0020.sql):
a month whose end is older than the retention is dropped whole, which writes no dead rows
and takes the same time however many runs the month held. What partitions do not hold is
still deleted a batch at a time, so no prune holds locks for long: the queue's finished
rows (due_work, whose runs are mostly gone with their month by then, so its cascade finds
little), the rows of the DEFAULT partitions (ids given out before the partitions, or
written when their month had no partition), events, and the bookkeeping tables.

Row deletes stop at the start of the month the retention ends in: what lies after that is
in a partition still kept, and will go with it, in one piece, once its month is past the
retention. History is therefore kept for the retention and at most one month more.

The audit log is never pruned. Dedupe keys are kept for their task's window,
however short the retention. An agent's spending windows go once they ended longer ago
than the retention (only the current ones are ever read).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from pao.db import Conn
from pao.store import (
    events,
    heartbeats,
    idempotency,
    occurrences,
    partitions,
    rate_counters,
    runs,
    spending,
)

log = logging.getLogger(__name__)

BATCH = 1000
#: Partitions are kept ready for this month and this many after it: a scheduler that stops
#: for up to two months still finds its month's partition when it comes back.
MONTHS_AHEAD = 2


def month_start(at: datetime) -> datetime:
    """The start of `at`'s month in UTC: the partitions' bounds."""
    at = at.astimezone(UTC)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def rows_before(now: datetime, retention: timedelta) -> datetime:
    """Where row deletes stop: the start of the month the retention ends in."""
    return month_start(now - retention)


async def ensure_partitions(conn: Conn, *, now: datetime) -> list[partitions.Outcome]:
    """Create the partitions of this month and the next ones, if missing (idempotent, safe
    with several schedulers); log what could not be made (its rows go to the DEFAULT
    partition meanwhile, so no write fails)."""
    outcomes = await partitions.ensure(conn, at=now, months_ahead=MONTHS_AHEAD)
    _log(
        outcomes,
        "created history partition %s",
        "could not create history partition %s: %s; its month's rows go to the default "
        "partition and are pruned row by row",
    )
    return outcomes


async def drop_partitions(
    conn: Conn, *, now: datetime, retention: timedelta
) -> list[partitions.Outcome]:
    """Drop the monthly partitions whose month ended longer ago than the retention."""
    outcomes = await partitions.drop_before(conn, before=now - retention)
    _log(
        outcomes,
        "dropped history partition %s (past the retention)",
        "kept history partition %s past the retention: %s; tried again at the next housekeeping",
    )
    return outcomes


def _log(outcomes: list[partitions.Outcome], done: str, not_done: str) -> None:
    """Each outcome at info when done, else as a warning with why."""
    for o in outcomes:
        if o.done:
            log.info(done, o.partition_name)
        else:
            log.warning(not_done, o.partition_name, o.detail)


async def prune_step(conn: Conn, *, now: datetime, retention: timedelta) -> int:
    """One batch of each kind of row pruning; returns rows deleted (0: nothing left)."""
    before = now - retention
    history_before = rows_before(now, retention)
    return (
        await runs.prune_finished(conn, before=history_before, limit=BATCH)
        + await occurrences.prune(conn, before=history_before, limit=BATCH)
        + await events.prune(conn, before=before, limit=BATCH)
        + await occurrences.prune_dedupe_keys(conn, now=now, limit=BATCH)
        + await idempotency.prune(conn, now=now, limit=BATCH)
        + await heartbeats.prune(conn, before=now - timedelta(days=1))
        + await rate_counters.prune(conn, now=now, limit=BATCH)
        + await spending.prune(conn, before=before, limit=BATCH)
    )
