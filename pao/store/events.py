"""Published events."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pao.db import Conn
from pao.models import Event
from pao.sql import QUERIES


async def insert_event(
    conn: Conn,
    *,
    type: str,
    payload: dict[str, Any],
    published_by: uuid.UUID | None,
    source_run_id: uuid.UUID | None = None,
) -> Event:
    async with conn.cursor(row_factory=class_row(Event)) as cur:
        await cur.execute(
            QUERIES["event_insert"],
            {
                "type": type,
                "payload": Jsonb(payload),
                "published_by": published_by,
                "source_run_id": source_run_id,
            },
        )
        event = await cur.fetchone()
    assert event is not None
    return event
