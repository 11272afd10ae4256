"""`rate_counters`, its stream rows: how many live streams an agent holds open.

Each open stream holds one of its agent's `cap` slots, a row of `rate_counters` keyed
'stream:<agent>:<n>' whose `window_start` is a lease the stream renews at each heartbeat, so
the count is right across API replicas, and a replica that dies leaks its streams' slots only
until their leases run out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from pao.db import Conn
from pao.sql import QUERIES


@dataclass(frozen=True)
class Slot:
    key: str
    held_since: datetime  # the lease's start: renewing or releasing it proves ownership


@dataclass(frozen=True)
class Check:
    allowed: bool  # the agent may still watch the task
    slot: Slot | None  # the renewed slot; None if it was lost (or the agent is not allowed)


async def claim(conn: Conn, agent_id: uuid.UUID, *, cap: int, lease_seconds: float) -> Slot | None:
    """A free slot of the agent's, or None when all `cap` are held. Run in a transaction of
    its own: the lock that keeps two replicas from taking one slot lasts until it ends."""
    await conn.execute(QUERIES["rate_counter_stream_lock"], {"agent_id": agent_id})
    cur = await conn.execute(
        QUERIES["rate_counter_stream_claim"],
        {"agent_id": agent_id, "cap": cap, "lease": lease_seconds},
    )
    row = await cur.fetchone()
    return Slot(key=row["key"], held_since=row["window_start"]) if row else None


async def renew(
    conn: Conn,
    slot: Slot,
    *,
    agent_id: uuid.UUID,
    token_hash: bytes,
    task_id: uuid.UUID,
    as_admin: bool,
) -> Check:
    """Check that the agent may still watch the task and, if so, renew the slot's lease."""
    cur = await conn.execute(
        QUERIES["rate_counter_stream_renew"],
        {
            "agent_id": agent_id,
            "token_hash": token_hash,
            "task_id": task_id,
            "as_admin": as_admin,
            "key": slot.key,
            "held_since": slot.held_since,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    renewed = row["renewed"]
    return Check(
        allowed=bool(row["allowed"]),
        slot=Slot(key=slot.key, held_since=renewed) if renewed is not None else None,
    )


async def release(conn: Conn, slot: Slot) -> None:
    """Give the slot back, if it is still this stream's."""
    await conn.execute(
        QUERIES["rate_counter_stream_release"], {"key": slot.key, "held_since": slot.held_since}
    )
