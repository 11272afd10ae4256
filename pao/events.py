"""Publishing events: stored once, fanned out to every matching active event task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pao.db import Conn
from pao.models import Agent, Event, Run
from pao.store import audit, events, runs, tasks


@dataclass(frozen=True)
class Published:
    event: Event
    runs: list[Run]


async def publish(
    conn: Conn, *, actor: Agent, type: str, payload: dict[str, Any], request_id: str | None
) -> Published:
    event = await events.insert_event(conn, type=type, payload=payload, published_by=actor.id)
    queued: list[Run] = []
    for task_id, priority in await tasks.list_tasks_matching_event(conn, type):
        run = await runs.enqueue(
            conn,
            task_id=task_id,
            scheduled_for=event.received_at,
            priority=priority,
            reason="event",
            event_id=event.id,
        )
        if run is not None:
            queued.append(run)
    await audit.record(
        conn,
        actor_id=actor.id,
        action="event.publish",
        target_type="event",
        target_id=event.id,
        request_id=request_id,
        detail={"type": type, "queued": len(queued)},
    )
    return Published(event, queued)
