"""`events`: published events, and their dispatch to event tasks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, from_row, model_row
from pao.models import Agent, Event
from pao.sql import QUERIES

AudienceValue = str | list[uuid.UUID] | None
"""An event's audience as given: "*" (every agent), agent ids, or None (the publisher's own)."""


def audience_columns(audience: AudienceValue) -> dict[str, Any]:
    """The `audience_all` and `audience` columns for an audience as given."""
    if audience == "*":
        return {"audience_all": True, "audience": None}
    if isinstance(audience, list):
        return {"audience_all": False, "audience": list(dict.fromkeys(audience))}
    return {"audience_all": False, "audience": None}


async def insert_event(
    conn: Conn,
    *,
    type: str,
    payload: dict[str, Any],
    published_by: uuid.UUID | None,
    source_run_id: uuid.UUID | None = None,
    dispatched: bool = True,
    hop: int = 0,
    audience: AudienceValue = None,
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
                "hop": hop,
                **audience_columns(audience),
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


@dataclass(frozen=True)
class StepOrigin:
    """The run a step publishes from: its task's owner as it is now, whether the owner may
    still act, and the hop of the event that triggered the run (None: no event did)."""

    owner: Agent
    usable: bool
    trigger_hop: int | None

    @property
    def hop(self) -> int:
        """The hop of an event this run publishes."""
        return 0 if self.trigger_hop is None else self.trigger_hop + 1


async def step_origin(conn: Conn, run_id: uuid.UUID) -> StepOrigin | None:
    cur = await conn.execute(QUERIES["event_step_origin"], {"run_id": run_id})
    row = await cur.fetchone()
    if row is None:
        return None
    return StepOrigin(from_row(Agent, row), row["usable"], row["trigger_hop"])
