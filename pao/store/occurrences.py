"""`occurrences` and `dedupe_keys`: decision records (what became of each nominal fire time)
and dedupe keys. Queueing an occurrence itself is `queue.py`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn
from pao.sql import QUERIES
from pao.vocabulary import Decision


@dataclass(frozen=True)
class DecisionRecord:
    """What became of one nominal fire time, for `occurrences`."""

    task_id: uuid.UUID
    nominal_at: datetime
    decision: Decision
    due_work_id: int | None = None
    detail: str | None = None

    def document(self) -> dict[str, Any]:
        """This decision as one element of a batch's JSON document."""
        return {
            "task_id": str(self.task_id),
            "nominal_at": self.nominal_at.isoformat(),
            "decision": self.decision,
            "due_work_id": self.due_work_id,
            "detail": self.detail,
        }


async def record_many(conn: Conn, decisions: Sequence[DecisionRecord]) -> None:
    if decisions:
        await conn.execute(
            QUERIES["occurrence_record_many"], {"batch": Jsonb([d.document() for d in decisions])}
        )


async def redecide(conn: Conn, due_work_ids: list[int], *, decision: Decision, detail: str) -> None:
    """Change the record of occurrences whose queued work was taken back or dropped."""
    if due_work_ids:
        await conn.execute(
            QUERIES["occurrence_redecide"],
            {"due_work_ids": due_work_ids, "decision": decision, "detail": detail},
        )


async def list_for_task(
    conn: Conn, task_id: uuid.UUID, *, before: datetime | None, limit: int
) -> list[dict[str, Any]]:
    cur = await conn.execute(
        QUERIES["occurrence_list"], {"task_id": task_id, "before": before, "limit": limit}
    )
    return list(await cur.fetchall())


async def event_room(conn: Conn, owners: list[uuid.UUID], *, limit: int) -> dict[uuid.UUID, int]:
    """How many more occurrences events may fire this hour for each owner, under `limit`
    (PAO_MAX_OCCURRENCES_PER_HOUR) shared with the owner's schedules."""
    if not owners:
        return {}
    cur = await conn.execute(QUERIES["occurrence_event_room"], {"owners": owners, "limit": limit})
    return {row["owner"]: int(row["room"]) for row in await cur.fetchall()}


async def claim_dedupe_key(
    conn: Conn, *, task_id: uuid.UUID, key: str, seen_at: datetime, window_seconds: int
) -> bool:
    """True when `key` was not seen for this task within the window (and is now noted)."""
    cur = await conn.execute(
        QUERIES["dedupe_key_claim"],
        {"task_id": task_id, "key": key, "seen_at": seen_at, "window": window_seconds},
    )
    return await cur.fetchone() is not None


async def prune_dedupe_keys(conn: Conn, *, now: datetime, limit: int) -> int:
    cur = await conn.execute(QUERIES["dedupe_key_prune"], {"now": now, "limit": limit})
    return cur.rowcount


async def prune(conn: Conn, *, before: datetime, limit: int) -> int:
    cur = await conn.execute(QUERIES["occurrence_prune"], {"before": before, "limit": limit})
    return cur.rowcount
