"""Queueing occurrences, with dedupe and a decision record for each nominal fire time.

Shared by the API (run now, events, pause, snooze) and the scheduler, so every
path that queues or drops an occurrence leaves the same trail.
"""

from __future__ import annotations

import json
from datetime import datetime

from pao.db import Conn
from pao.models import Event, Task
from pao.store import occurrences as store
from pao.store.occurrences import DecisionRecord
from pao.templates import JSONValue, TemplateError, parse_template
from pao.vocabulary import Decision


def template_context(task: Task, nominal_at: datetime, event: Event | None) -> dict[str, JSONValue]:
    """What `${…}` may look up when a task's dedupe key is rendered."""
    context: dict[str, JSONValue] = {
        "task": {
            "id": str(task.id),
            "title": task.title,
            "payload": task.payload,
            "created_by": str(task.created_by),
        },
        "run": {"scheduled_for": nominal_at.isoformat()},
    }
    if event is not None:
        context["event"] = {"id": str(event.id), "type": event.type, "payload": event.payload}
    return context


def render_dedupe_key(task: Task, nominal_at: datetime, event: Event | None) -> str:
    """The task's dedupe key for this occurrence; TemplateError if a lookup fails."""
    assert task.dedupe_key is not None
    value = parse_template(task.dedupe_key).render(template_context(task, nominal_at, event))
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


async def duplicate_reason(
    conn: Conn, task: Task, nominal_at: datetime, event: Event | None
) -> str | None:
    """Why this occurrence is a duplicate, or None to let it run (and note its key)."""
    if task.dedupe_key is None or task.dedupe_window_seconds <= 0:
        return None
    try:
        key = render_dedupe_key(task, nominal_at, event)
    except TemplateError:
        return None  # no key for this occurrence: nothing to match it against
    fresh = await store.claim_dedupe_key(
        conn,
        task_id=task.id,
        key=key,
        seen_at=nominal_at,
        window_seconds=task.dedupe_window_seconds,
    )
    if fresh:
        return None
    return f"dedupe key {key!r} was seen within {task.dedupe_window_seconds}s"


async def suppressed(conn: Conn, task: Task, nominal_at: datetime, event: Event | None) -> bool:
    """True when the task's dedupe key makes this occurrence a duplicate (recorded as such)."""
    why = await duplicate_reason(conn, task, nominal_at, event)
    if why is None:
        return False
    await store.record_many(
        conn, [DecisionRecord(task.id, nominal_at, Decision.DEDUPLICATED, None, why)]
    )
    return True
