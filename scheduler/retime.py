"""Recomputing stored fire times when a tzdata upgrade brings a zone new rules.

Each task records the tzdata release that computed its `next_run_at`. Every later fire
time is worked out afresh from it by whichever release the scheduler runs, but that one
stored time was computed under the old rules: a daily 09:00 America/Havana task stored
14:00Z under 2026a, and after an upgrade to 2026f (which drops Havana's 2026 fall-back)
it would still fire at 14:00Z, 10:00 local, once. A scheduler whose release is newer
than a task's recomputes the task's time, in batches of rows locked with SKIP LOCKED:
however many schedulers start together, each task is recomputed once (its new stamp
takes it out of the look), and where its time moved, one decision record says so.

The new time is the first fire time after now by the database's clock (after the
stored time just before it, when that is overdue and the misfire rules still have it
to judge), so it agrees with `GET /tasks/{id}/occurrences`. A pending snooze is kept:
its time is no rule's. A release older than a task's (a downgrade) recomputes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pao.db import Conn
from pao.models import Task
from pao.schedule import Budget, parse_schedule
from pao.store import occurrences as occurrence_store
from pao.store import tasks as task_store
from pao.store.occurrences import DecisionRecord
from pao.vocabulary import Decision

log = logging.getLogger(__name__)

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Retimed:
    """What one stale task's next fire time becomes under this release's rules."""

    task: Task
    next_run_at: datetime
    dropped: bool  # the stored time is no fire time any more (a decision records it)


def retime(task: Task, *, now: datetime, snoozed: bool) -> Retimed:
    """The task's next fire time by the zone rules in use: the first fire time after `now`,
    or at or after the stored time when that is already past. Unchanged for a pending
    snooze, a schedule that no longer gives one, or one that cannot be worked out (the
    scheduler's materialise then judges it as it judges any other)."""
    stored = task.next_run_at
    assert stored is not None
    if snoozed:
        return Retimed(task, stored, False)
    try:
        schedule = parse_schedule(
            task.schedule_kind, task.schedule_expr, task.timezone, created_at=task.created_at
        )
        budget = Budget()
        fresh = schedule.next_after(min(stored, now + _TICK) - _TICK, budget=budget)
        if fresh is None or fresh == stored:
            return Retimed(task, stored, False)
        still = schedule.next_after(stored - _TICK, budget=budget) == stored
    except Exception:
        log.exception("task %s: cannot recompute its next fire time; it keeps it", task.id)
        return Retimed(task, stored, False)
    return Retimed(task, fresh, not still)


def _retime_all(rows: Sequence[tuple[Task, bool]], now: datetime) -> list[Retimed]:
    return [retime(task, now=now, snoozed=snoozed) for task, snoozed in rows]


async def retime_batch(conn: Conn, *, now: datetime, version: str, limit: int) -> tuple[int, int]:
    """Recompute up to `limit` stale tasks' fire times with tzdata `version` in the caller's
    transaction; returns (tasks looked at, tasks whose next fire time moved)."""
    rows = await task_store.lock_stale_zones(conn, version=version, limit=limit)
    if not rows:
        return 0, 0
    # Schedule math on a thread, as materialise does: the loop serves the other jobs.
    found = await asyncio.to_thread(_retime_all, rows, now)
    updates: list[tuple[uuid.UUID, datetime]] = []
    decisions: list[DecisionRecord] = []
    moved = 0
    for r in found:
        task, stored = r.task, r.task.next_run_at
        assert stored is not None
        updates.append((task.id, r.next_run_at))
        if r.next_run_at == stored:
            continue
        moved += 1
        was = task.tzdata_version or "an unrecorded release"
        detail = (
            f"the zone rules of tzdata {version} (this time was computed with {was}) put the "
            f"next fire time of {task.timezone} at {r.next_run_at.isoformat()}"
        )
        log.info("task %s: %s, not %s", task.id, detail, stored.isoformat())
        if r.dropped:
            decisions.append(DecisionRecord(task.id, stored, Decision.RECOMPUTED, None, detail))
        # Else the stored time still fires (an earlier one came first): it is queued in its
        # turn, and a record here would stand in the way of that one.
    await task_store.retime_many(conn, updates, version=version)
    await occurrence_store.record_many(conn, decisions)
    return len(rows), moved
