"""Fixed-window counters in PostgreSQL, so every API replica counts against one limit.

A window opens at a key's first hit, so a burst is judged as a whole rather than split
by a clock boundary.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from pao import tokens
from pao.db import Conn, Cursor, from_row
from pao.models import Agent, Task
from pao.sql import QUERIES


@dataclass(frozen=True)
class Count:
    hits: int
    reset_seconds: int  # until the window ends


def _count(row: dict[str, object] | None) -> Count | None:
    if row is None:
        return None
    return Count(hits=int(str(row["hits"])), reset_seconds=max(1, int(str(row["reset_seconds"]))))


@dataclass(frozen=True)
class SignIn:
    """What signing a request in found: who it is, and how the counters stand."""

    agent: Agent | None
    blocked: Count | None  # the address is over its failed sign-ins: nothing was looked up
    count: Count | None  # the agent's requests this window, or the address's failures
    task: Task | None = None  # the task asked for, if the agent is signed in and it exists


async def sign_in(
    conn: Conn | Cursor,
    token: str | None,
    *,
    failures_key: str,
    failures_limit: int,
    rate_limited: bool,
    window: int,
    task_id: uuid.UUID | None = None,
) -> SignIn:
    """Check the address, find the token's agent and count the request, in one statement.

    A malformed token is never looked up (it counts as a failure); `failures_limit` 0 and
    `rate_limited` False turn the two counters off. With `task_id`, the statement also reads
    that task for a signed-in agent, whoever owns it: the caller decides what it may see.
    """
    well_formed = token is not None and tokens.is_well_formed(token)
    cur = await conn.execute(
        QUERIES["rate_counter_sign_in"],
        {
            "token_hash": tokens.token_hash(token) if well_formed and token else None,
            "failures_key": failures_key,
            "failures_limit": failures_limit,
            "rate_limited": rate_limited,
            "window": window,
            "task_id": task_id,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    blocked = None
    if row["blocked_hits"] is not None:
        blocked = _count({"hits": row["blocked_hits"], "reset_seconds": row["blocked_reset"]})
    agent = from_row(Agent, row, prefix="agent_") if row["agent_id"] is not None else None
    task = from_row(Task, row) if row["id"] is not None else None
    count = _count(row) if row["hits"] else None
    return SignIn(agent=agent, blocked=blocked, count=count, task=task)


async def prune(conn: Conn, *, now: datetime, limit: int) -> int:
    """Delete up to `limit` counters idle for an hour; returns how many."""
    cur = await conn.execute(QUERIES["rate_counter_prune"], {"now": now, "limit": limit})
    return cur.rowcount
