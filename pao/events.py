"""Events: stored once, fanned out to every matching active event task."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pao import occurrences
from pao.db import Conn
from pao.models import Agent, Event, Run, Task
from pao.store import audit, events, tasks, work
from pao.store import occurrences as occurrence_store
from pao.store.occurrences import QueueRequest


@dataclass(frozen=True)
class Published:
    event: Event
    runs: list[Run]
    own_task_ids: set[uuid.UUID]  # the publisher's tasks among those that fired


# Two events received in the same microsecond (concurrent publishers) must both fire: the
# later one's occurrence moves on by a microsecond, at most this many times.
MAX_NUDGES = 1000


async def dispatch(conn: Conn, event: Event) -> list[tuple[Task, Run]]:
    """Queue one occurrence of each matching active event task (dedupe keys applied).

    The matching tasks are queued together, in one statement however many there are; a task
    whose occurrence at the event's time is taken already is tried alone, a microsecond on.
    """
    matching = [
        task
        for task in await tasks.list_tasks_matching_event(conn, event.type)
        if not await occurrences.suppressed(conn, task, event.received_at, event)
    ]
    if not matching:
        return []
    detail = f"event {event.type} {event.id}"
    first = await occurrence_store.queue_many(
        conn,
        [
            QueueRequest.of(task, event.received_at, "event", event_id=event.id, detail=detail)
            for task in matching
        ],
    )
    runs = {run.task_id: run for run in first}
    queued: list[tuple[Task, Run]] = []
    for task in matching:
        run = runs.get(task.id) or await _nudged(conn, task, event, detail)
        if run is not None:
            queued.append((task, run))
    return queued


async def _nudged(conn: Conn, task: Task, event: Event, detail: str) -> Run | None:
    """The task's occurrence at the event's time was taken: by this very event (dispatched
    before), or by another received in the same microsecond, which moves this one on."""
    at = event.received_at
    for _ in range(MAX_NUDGES):
        if await work.event_at(conn, task.id, at) in (event.id, False):
            return None  # this very event is queued already (or the slot is free after all)
        at += timedelta(microseconds=1)
        run = await occurrence_store.queue(
            conn, QueueRequest.of(task, at, "event", event_id=event.id, detail=detail)
        )
        if run is not None:
            return run
    return None


async def publish(
    conn: Conn, *, actor: Agent, type: str, payload: dict[str, Any], request_id: str | None
) -> Published:
    """Store an event and fan it out in the same transaction."""
    event = await events.insert_event(conn, type=type, payload=payload, published_by=actor.id)
    queued = await dispatch(conn, event)
    await audit.record(
        conn,
        actor_id=actor.id,
        action="event.publish",
        target_type="event",
        target_id=event.id,
        request_id=request_id,
        detail={"type": type, "queued": len(queued)},
    )
    own = {task.id for task, _ in queued if task.created_by == actor.id}
    return Published(event, [run for _, run in queued], own)
