"""Queueing occurrences: each one's `due_work` row (what workers claim), its first run and its
`queued` decision record, written by one statement that wakes idle workers at commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, model_row
from pao.models import Run, Task
from pao.sql import QUERIES
from pao.vocabulary import QueueReason


@dataclass(frozen=True)
class QueueRequest:
    task_id: uuid.UUID
    nominal_at: datetime
    scheduled_for: datetime
    priority: int
    reason: QueueReason
    event_id: uuid.UUID | None = None
    detail: str | None = None

    @classmethod
    def of(
        cls,
        task: Task,
        at: datetime,
        reason: QueueReason,
        *,
        event_id: uuid.UUID | None = None,
        detail: str | None = None,
    ) -> QueueRequest:
        """The task's occurrence at its nominal time `at`, due then, at the task's priority."""
        return cls(task.id, at, at, task.priority, reason, event_id, detail)

    def document(self) -> dict[str, Any]:
        """This request as one element of a batch's JSON document."""
        return {
            "task_id": str(self.task_id),
            "nominal_at": self.nominal_at.isoformat(),
            "scheduled_for": self.scheduled_for.isoformat(),
            "priority": self.priority,
            "reason": self.reason,
            "event_id": str(self.event_id) if self.event_id else None,
            "detail": self.detail,
        }


async def queue(conn: Conn, request: QueueRequest) -> Run | None:
    """Queue one occurrence with its run and record; None if it was already queued."""
    async with conn.cursor(row_factory=model_row(Run)) as cur:
        # The statement's parameters are the request's fields, by name.
        await cur.execute(QUERIES["due_work_queue_one"], vars(request))
        return await cur.fetchone()


async def queue_many(conn: Conn, requests: Sequence[QueueRequest]) -> list[Run]:
    """Queue many occurrences in one statement; returns the runs actually created."""
    if not requests:
        return []
    async with conn.cursor(row_factory=model_row(Run)) as cur:
        await cur.execute(
            QUERIES["due_work_queue_many"], {"batch": Jsonb([r.document() for r in requests])}
        )
        return await cur.fetchall()
