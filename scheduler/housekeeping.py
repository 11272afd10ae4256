"""Pruning history in small batches, so no prune holds locks for long.

The audit log is never pruned. Dedupe keys are kept for their task's window,
however short the retention. An agent's spending windows go once they ended longer ago
than the retention (only the current ones are ever read).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pao.db import Conn
from pao.store import (
    events,
    heartbeats,
    idempotency,
    occurrences,
    rate_counters,
    runs,
    spending,
)

BATCH = 1000


async def prune_step(conn: Conn, *, now: datetime, retention: timedelta) -> int:
    """One batch of each kind of pruning; returns rows deleted (0: nothing left)."""
    before = now - retention
    return (
        await runs.prune_finished(conn, before=before, limit=BATCH)
        + await occurrences.prune(conn, before=before, limit=BATCH)
        + await events.prune(conn, before=before, limit=BATCH)
        + await occurrences.prune_dedupe_keys(conn, now=now, limit=BATCH)
        + await idempotency.prune(conn, now=now, limit=BATCH)
        + await heartbeats.prune(conn, before=now - timedelta(days=1))
        + await rate_counters.prune(conn, now=now, limit=BATCH)
        + await spending.prune(conn, before=before, limit=BATCH)
    )
