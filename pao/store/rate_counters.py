"""`rate_counters`: fixed-window counters, so every API replica counts against one limit.

A window opens at a key's first hit, so a burst is judged as a whole rather than split
by a clock boundary.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import RowMaker

from pao import tokens
from pao.db import Conn, Cursor, field_names
from pao.models import Agent, Task
from pao.sql import QUERIES


@dataclass(frozen=True)
class Count:
    hits: int
    reset_seconds: int  # until the window ends


def _count(hits: object, reset_seconds: object) -> Count:
    return Count(hits=int(str(hits)), reset_seconds=max(1, int(str(reset_seconds))))


@dataclass(frozen=True)
class SignIn:
    """What signing a request in found: who it is, and how the counters stand."""

    agent: Agent | None
    blocked: Count | None  # no usable token, and the address is over its failed sign-ins
    count: Count | None  # the agent's requests this window, or the address's failures
    task: Task | None = None  # the task asked for, if the agent is signed in and it exists


async def sign_in(
    cur: Cursor,
    token: str | None,
    *,
    failures_key: str,
    failures_limit: int,
    rate_limited: bool,
    window: int,
    task_id: uuid.UUID | None = None,
) -> SignIn:
    """Find the token's agent, check the address and count the request, in one statement.

    A valid token signs in whatever its address's failures (behind a proxy all clients
    share one); only a request without one is refused when the address is over
    `failures_limit`. A malformed token is never looked up (it counts as a failure);
    `failures_limit` 0 and
    `rate_limited` False turn the two counters off. With `task_id`, the statement also reads
    that task for a signed-in agent, whoever owns it: the caller decides what it may see.
    """
    well_formed = token is not None and tokens.is_well_formed(token)
    if cur.row_factory is not _signed_in:  # setting it reads the last result's columns
        cur.row_factory = _signed_in
    await cur.execute(
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
    signed = await cur.fetchone()
    assert isinstance(signed, SignIn)
    return signed


class _Layout:
    """Where the sign-in's columns sit, found once per column list rather than per request.

    The row goes straight into a SignIn by position, with no dict of some forty columns
    built first; the task's columns are matched by name (`t.*`), so a column a later
    migration adds is ignored as `model_row` would.
    """

    def __init__(self, names: tuple[bytes, ...]) -> None:
        at = {name.decode(): i for i, name in enumerate(names)}
        self.blocked_hits, self.blocked_reset = at["blocked_hits"], at["blocked_reset"]
        self.hits, self.reset_seconds = at["hits"], at["reset_seconds"]
        self.agent_id, self.task_id = at["agent_id"], at["id"]
        self.agent = [(f, at["agent_" + f]) for f in field_names(Agent) if "agent_" + f in at]
        self.task = [(f, at[f]) for f in field_names(Task) if f in at]

    def make(self, values: Sequence[Any]) -> SignIn:
        blocked = None
        if values[self.blocked_hits] is not None:
            blocked = _count(values[self.blocked_hits], values[self.blocked_reset])
        agent = task = None
        if values[self.agent_id] is not None:
            agent = Agent(**{f: values[i] for f, i in self.agent})
        if values[self.task_id] is not None:
            task = Task(**{f: values[i] for f, i in self.task})
        count = _count(values[self.hits], values[self.reset_seconds]) if values[self.hits] else None
        return SignIn(agent=agent, blocked=blocked, count=count, task=task)


_LAYOUTS: dict[tuple[bytes, ...], _Layout] = {}


def _signed_in(cursor: Any) -> RowMaker[SignIn]:
    result = cursor.pgresult
    names = tuple(map(result.fname, range(result.nfields)))  # as sent: decoded once, above
    layout = _LAYOUTS.get(names)
    if layout is None:
        if len(_LAYOUTS) > 8:  # a few column lists at most, across migrations
            _LAYOUTS.clear()
        layout = _LAYOUTS[names] = _Layout(names)
    return layout.make


async def prune(conn: Conn, *, now: datetime, limit: int) -> int:
    """Delete up to `limit` counters idle for an hour; returns how many."""
    cur = await conn.execute(QUERIES["rate_counter_prune"], {"now": now, "limit": limit})
    return cur.rowcount
