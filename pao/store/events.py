"""Published events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, model_row
from pao.models import Event
from pao.sql import QUERIES


async def insert_event(
    conn: Conn,
    *,
    type: str,
    payload: dict[str, Any],
    published_by: uuid.UUID | None,
    source_run_id: uuid.UUID | None = None,
    dispatched: bool = True,
) -> Event:
    async with conn.cursor(row_factory=model_row(Event)) as cur:
        await cur.execute(
            QUERIES["event_insert"],
            {
                "type": type,
                "payload": Jsonb(payload),
                "published_by": published_by,
                "source_run_id": source_run_id,
                "dispatched": dispatched,
            },
        )
        event = await cur.fetchone()
    assert event is not None
    return event


async def lock_pending(conn: Conn, *, limit: int) -> list[Event]:
    async with conn.cursor(row_factory=model_row(Event)) as cur:
        await cur.execute(QUERIES["event_lock_pending"], {"limit": limit})
        return await cur.fetchall()


async def mark_dispatched(conn: Conn, ids: list[uuid.UUID]) -> None:
    if ids:
        await conn.execute(QUERIES["event_mark_dispatched"], {"ids": ids})


async def prune(conn: Conn, *, before: datetime, limit: int) -> int:
    cur = await conn.execute(QUERIES["event_prune"], {"before": before, "limit": limit})
    return cur.rowcount
