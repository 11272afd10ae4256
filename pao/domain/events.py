"""Events: stored once, fanned out to the matching active event tasks they may reach.

An event reaches its publisher's own event tasks, and other agents' only through an
audience, which only an admin or an agent with `events:broadcast` may set. A chain of
events (a step of a run an event triggered publishes the next) ends at
PAO_EVENT_MAX_HOPS, and what events fire counts toward the owner's hourly quota: each
occurrence an event does not fire for either reason is recorded with why.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pao.db import Conn
from pao.domain import budgets, occurrences
from pao.errors import MissingScope
from pao.models import Agent, Event, Run, Task
from pao.settings import Settings
from pao.store import audit, events, queue, tasks, work
from pao.store import occurrences as occurrence_store
from pao.store.events import AudienceValue
from pao.store.occurrences import DecisionRecord
from pao.store.queue import QueueRequest
from pao.vocabulary import Decision, QueueReason, Scope

BROADCAST = Scope.EVENTS_BROADCAST


@dataclass(frozen=True)
class Limits:
    """What bounds a fan-out: PAO_EVENT_MAX_HOPS, and PAO_MAX_OCCURRENCES_PER_HOUR (0: no
    quota), which an owner's event-fired occurrences share with its schedules' peaks."""

    max_hops: int
    max_occurrences_per_hour: int
    default_timezone: str = "Europe/Chisinau"  # where an owner's budget days are counted

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.event_max_hops, settings.max_occurrences_per_hour, settings.default_timezone
        )


@dataclass
class Fanned:
    """What one event fired, and what its owners' budgets or run rates refused."""

    queued: list[tuple[Task, Run]] = field(default_factory=list)
    refused: list[tuple[Task, budgets.Refusal]] = field(default_factory=list)


@dataclass(frozen=True)
class Published:
    event: Event
    runs: list[Run]
    own_task_ids: set[uuid.UUID]  # the publisher's tasks among those that fired
    refused: list[tuple[Task, budgets.Refusal]] = field(default_factory=list)


# Two events received in the same microsecond (concurrent publishers) must both fire: the
# later one's occurrence moves on by a microsecond, at most this many times.
MAX_NUDGES = 1000


def reached_owners(event: Event) -> list[uuid.UUID] | None:
    """The agents whose event tasks the event may reach; None for every agent's."""
    if event.audience_all:
        return None
    owners = [] if event.published_by is None else [event.published_by]
    return list(dict.fromkeys([*owners, *(event.audience or [])]))


async def dispatch(
    conn: Conn, event: Event, limits: Limits, *, now: datetime | None = None
) -> Fanned:
    """Queue one occurrence of each matching active event task the event may reach, within
    the hop limit, each owner's quota and each owner's budgets and run rate (dedupe keys
    applied); what a budget or run rate refused is recorded (over_budget, rate_limited).
    Budgets are judged at `now` by the database's clock (None: when the event arrived, which
    the database stamped).

    The matching tasks are found by one statement that reads only the reached owners' tasks,
    and queued together, in one statement however many there are; a task whose occurrence at
    the event's time is taken already is tried alone, a microsecond on.
    """
    owners = reached_owners(event)
    if owners == []:
        return Fanned()
    found = await tasks.list_tasks_matching_event(conn, event.type, owners=owners)
    if not found:
        return Fanned()
    if event.hop > limits.max_hops:
        why = (
            f"event {event.type} {event.id} is {event.hop} hops down a chain of events, past "
            f"the limit (PAO_EVENT_MAX_HOPS={limits.max_hops}): it fires nothing"
        )
        await _record(conn, found, event, Decision.HOP_LIMIT, why)
        return Fanned()
    matching = [
        task
        for task in await _within_quota(conn, found, event, limits.max_occurrences_per_hour)
        if not await occurrences.suppressed(conn, task, event.received_at, event)
    ]
    fanned = Fanned()
    admissions: dict[uuid.UUID, budgets.Admission] = {}
    if matching:
        matching, fanned.refused, admissions = await _within_budgets(
            conn, matching, limits, now=now or event.received_at
        )
        await occurrence_store.record_many(
            conn,
            [
                DecisionRecord(task.id, event.received_at, r.decision, None, r.detail)
                for task, r in fanned.refused
            ],
        )
    if not matching:
        return fanned
    detail = f"event {event.type} {event.id} (hop {event.hop})"
    first = await queue.queue_many(
        conn,
        [
            QueueRequest.of(
                task, event.received_at, QueueReason.EVENT, event_id=event.id, detail=detail
            )
            for task in matching
        ],
    )
    runs = {run.task_id: run for run in first}
    for task in matching:
        run = runs.get(task.id) or await _nudged(conn, task, event, detail)
        if run is not None:
            fanned.queued.append((task, run))
    for owner, admission in admissions.items():
        mine = [(task, run) for task, run in fanned.queued if task.created_by == owner]
        await admission.record(
            conn, {run.due_work_id: task.cost_estimate for task, run in mine}, runs=len(mine)
        )
    return fanned


async def _within_budgets(
    conn: Conn, found: list[Task], limits: Limits, *, now: datetime
) -> tuple[list[Task], list[tuple[Task, budgets.Refusal]], dict[uuid.UUID, budgets.Admission]]:
    """The tasks their owners' budgets and run rates admit, in order; those refused, with
    why; and the admissions to record what is queued in (owners with no limits need none)."""
    limited = await budgets.limited(conn, [task.created_by for task in found])
    if not limited:
        return found, [], {}
    admissions: dict[uuid.UUID, budgets.Admission] = {}
    for owner in sorted(limited):
        admission = await budgets.admission(
            conn, owner, now=now, default_timezone=limits.default_timezone
        )
        if admission is not None:
            admissions[owner] = admission
    admitted: list[Task] = []
    refused: list[tuple[Task, budgets.Refusal]] = []
    for task in found:
        admission = admissions.get(task.created_by)
        refusal = admission.decide(task.cost_estimate) if admission is not None else None
        if refusal is None:
            admitted.append(task)
        else:
            refused.append((task, refusal))
    return admitted, refused, admissions


async def _record(
    conn: Conn, found: list[Task], event: Event, decision: Decision, why: str
) -> None:
    await occurrence_store.record_many(
        conn, [DecisionRecord(task.id, event.received_at, decision, None, why) for task in found]
    )


async def _within_quota(conn: Conn, found: list[Task], event: Event, limit: int) -> list[Task]:
    """The tasks whose owners' hourly quota has room for one more occurrence, in order; the
    others are recorded as over quota."""
    if not limit:
        return found
    room = await occurrence_store.event_room(
        conn, sorted({task.created_by for task in found}), limit=limit
    )
    admitted, refused = [], []
    for task in found:
        if room.get(task.created_by, 0) > 0:
            room[task.created_by] -= 1
            admitted.append(task)
        else:
            refused.append(task)
    if refused:
        why = (
            f"event {event.type} {event.id} fires nothing more for this agent this hour: its "
            f"schedules' peaks and what its event tasks fired in the last hour reach its quota "
            f"(PAO_MAX_OCCURRENCES_PER_HOUR={limit})"
        )
        await _record(conn, refused, event, Decision.OVER_QUOTA, why)
    return admitted


async def _nudged(conn: Conn, task: Task, event: Event, detail: str) -> Run | None:
    """The task's occurrence at the event's time was taken: by this very event (dispatched
    before), or by another received in the same microsecond, which moves this one on."""
    at = event.received_at
    for _ in range(MAX_NUDGES):
        if await work.event_at(conn, task.id, at) in (event.id, False):
            return None  # this very event is queued already (or the slot is free after all)
        at += timedelta(microseconds=1)
        run = await queue.queue(
            conn, QueueRequest.of(task, at, QueueReason.EVENT, event_id=event.id, detail=detail)
        )
        if run is not None:
            return run
    return None


async def publish(
    conn: Conn,
    *,
    actor: Agent,
    type: str,
    payload: dict[str, Any],
    request_id: str | None,
    limits: Limits,
    audience: AudienceValue = None,
) -> Published:
    """Store an event (hop 0: no run published it) and fan it out in the same transaction.

    `audience` reaches other agents' tasks, so only an admin or an agent with
    events:broadcast may give it. Without an audience, an event whose every matching task
    the publisher's budget or run rate refuses raises BudgetExceeded or RunRateLimited (a
    429); otherwise what was refused is recorded on each task's occurrences.
    """
    if audience is not None and not actor.has_scope(BROADCAST):
        raise MissingScope(
            f"setting 'audience' needs the '{BROADCAST}' scope; leave it out to reach this "
            "agent's own event tasks, or ask an admin for the scope",
            scope=BROADCAST,
        )
    event = await events.insert_event(
        conn, type=type, payload=payload, published_by=actor.id, audience=audience
    )
    fanned = await dispatch(conn, event, limits)
    queued = fanned.queued
    if audience is None and fanned.refused and not queued:
        # Meant for the publisher's own tasks alone, and its budget or run rate refused every
        # one it matched: told at once, as run_now is, and nothing is kept (the caller's
        # transaction rolls back), so a retry after Retry-After publishes it afresh.
        raise fanned.refused[0][1].error()
    detail: dict[str, Any] = {"type": type, "queued": len(queued)}
    if fanned.refused:
        detail["refused"] = len(fanned.refused)
    if audience is not None:
        detail["audience"] = audience if audience == "*" else [str(a) for a in audience]
    await audit.record(
        conn,
        actor_id=actor.id,
        action="event.publish",
        target_type="event",
        target_id=event.id,
        request_id=request_id,
        detail=detail,
    )
    own = {task.id for task, _ in queued if task.created_by == actor.id}
    return Published(event, [run for _, run in queued], own, fanned.refused)
