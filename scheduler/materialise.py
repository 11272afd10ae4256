"""Turning due occurrences into `due_work` rows, one short transaction per batch.

Tasks are taken with `FOR UPDATE SKIP LOCKED`, so any number of schedulers
share the work and none sees a task another is handling; `UNIQUE (task_id,
scheduled_for)` with `ON CONFLICT DO NOTHING` makes a repeated attempt
harmless. Each occurrence and its `next_run_at` advance commit together, so a
scheduler killed mid-batch leaves the batch either done or untouched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from pao.db import Conn
from pao.domain import budgets, occurrences
from pao.models import Task
from pao.schedule import Schedule, parse_schedule
from pao.settings import Settings
from pao.store import occurrences as occurrence_store
from pao.store import queue
from pao.store import tasks as task_store
from pao.store.occurrences import DecisionRecord
from pao.store.queue import QueueRequest
from pao.vocabulary import Decision, QueueReason, TaskStatus
from scheduler import metrics
from scheduler.plan import Plan, plan

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=20_000)
def _schedule(kind: str, expr: str, timezone: str, created_at: datetime) -> Schedule:
    # Parsed schedules are immutable; most ticks meet the same tasks again.
    return parse_schedule(kind, expr, timezone, created_at=created_at)


def schedule_of(task: Task) -> Schedule:
    return _schedule(task.schedule_kind, task.schedule_expr, task.timezone, task.created_at)


def _plans(tasks: Sequence[Task], *, now: datetime, horizon: datetime) -> list[Plan | None]:
    """Each task's plan, or None for a task whose schedule cannot be worked out.

    Each plan walks its schedule within one search budget, so a costly rule (one stored
    before budgets existed, say) costs this batch a bounded amount once and then stops
    firing, rather than stalling every tick.
    """
    plans: list[Plan | None] = []
    for task in tasks:
        assert task.next_run_at is not None
        try:
            plans.append(
                plan(
                    schedule_of(task),
                    next_run_at=task.next_run_at,
                    policy=task.misfire_policy,
                    grace_seconds=task.misfire_grace_seconds,
                    now=now,
                    horizon=horizon,
                )
            )
        except Exception:
            # A schedule that no longer parses (zone data changed) or that its search
            # budget cannot follow: it stops firing until someone edits it.
            log.exception("task %s: cannot compute its schedule; it stops firing", task.id)
            plans.append(None)
    return plans


async def _within_budgets(
    conn: Conn,
    requests: list[QueueRequest],
    owner_of: dict[uuid.UUID, uuid.UUID],
    *,
    now: datetime,
    default_timezone: str,
    estimates: dict[uuid.UUID, Decimal],
) -> tuple[list[QueueRequest], list[DecisionRecord], dict[uuid.UUID, budgets.Admission]]:
    """The requests their owners' budgets and run rates admit (earliest first when not all
    fit), in their order; records for the others (over_budget, rate_limited); and the
    admissions to record what is queued in. Owners with no limits cost one lookup a batch."""
    limited = await budgets.limited(conn, [owner_of[r.task_id] for r in requests])
    if not limited:
        return requests, [], {}
    admissions: dict[uuid.UUID, budgets.Admission] = {}
    for owner in sorted(limited):
        admission = await budgets.admission(conn, owner, now=now, default_timezone=default_timezone)
        if admission is not None:
            admissions[owner] = admission
    refused: dict[int, DecisionRecord] = {}
    for i in sorted(range(len(requests)), key=lambda i: requests[i].nominal_at):
        r = requests[i]
        admission = admissions.get(owner_of[r.task_id])
        why = admission.decide(estimates[r.task_id]) if admission is not None else None
        if why is not None:
            refused[i] = DecisionRecord(r.task_id, r.nominal_at, why.decision, None, why.detail)
            metrics.REFUSED.labels(why.decision).inc()
    kept = [r for i, r in enumerate(requests) if i not in refused]
    return kept, list(refused.values()), admissions


async def materialise_batch(
    conn: Conn,
    *,
    now: datetime,
    horizon: datetime,
    limit: int,
    default_timezone: str = Settings.default_timezone,
) -> tuple[int, int]:
    """Settle up to `limit` due tasks in the caller's transaction; returns (tasks, queued).

    Owners with a budget or a run rate have their occurrences admitted against them (in
    `default_timezone` for an owner with no zone of its own); what does not fit is
    recorded as over_budget or rate_limited, catch-up included."""
    tasks = await task_store.lock_due(conn, horizon=horizon, limit=limit)
    requests: list[QueueRequest] = []
    decisions: list[DecisionRecord] = []
    coalesced: list[tuple[Task, datetime, datetime, str]] = []
    advances: list[tuple[uuid.UUID, datetime | None, TaskStatus]] = []
    # Schedule math on a thread: the loop keeps serving the scheduler's other work (and
    # its metrics) while a batch's plans are worked out.
    plans = await asyncio.to_thread(_plans, tasks, now=now, horizon=horizon) if tasks else []
    for task, planned in zip(tasks, plans, strict=True):
        if planned is None:
            advances.append((task.id, None, TaskStatus.ACTIVE))
            continue
        for nominal, detail in planned.queue:
            why = await occurrences.duplicate_reason(conn, task, nominal, None)
            if why is not None:
                decisions.append(DecisionRecord(task.id, nominal, Decision.DEDUPLICATED, None, why))
                continue
            requests.append(QueueRequest.of(task, nominal, QueueReason.SCHEDULE, detail=detail))
        for verdict in planned.verdicts:
            if verdict.into is not None:
                coalesced.append((task, verdict.nominal_at, verdict.into, verdict.detail))
            else:
                decisions.append(
                    DecisionRecord(
                        task.id, verdict.nominal_at, verdict.decision, None, verdict.detail
                    )
                )
        status = TaskStatus.COMPLETED if planned.finished else TaskStatus.ACTIVE
        advances.append((task.id, planned.next_run_at, status))

    admissions: dict[uuid.UUID, budgets.Admission] = {}
    owner_of = {task.id: task.created_by for task in tasks}
    estimates = {task.id: task.cost_estimate for task in tasks}
    if requests:
        requests, refused, admissions = await _within_budgets(
            conn,
            requests,
            owner_of,
            now=now,
            default_timezone=default_timezone,
            estimates=estimates,
        )
        decisions += refused
    runs = await queue.queue_many(conn, requests)  # wakes workers at commit
    for owner, admission in admissions.items():
        mine = [r for r in runs if owner_of[r.task_id] == owner]
        await admission.record(conn, {r.due_work_id: estimates[r.task_id] for r in mine}, len(mine))
    work_of = {(r.task_id, r.scheduled_for): r.due_work_id for r in runs}
    for task, nominal, into, detail in coalesced:
        decisions.append(
            DecisionRecord(
                task.id, nominal, Decision.COALESCED, work_of.get((task.id, into)), detail
            )
        )
    await occurrence_store.record_many(conn, decisions)
    await task_store.advance_many(conn, advances)
    return len(tasks), len(runs)
