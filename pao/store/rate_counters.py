"""Fixed-window counters in PostgreSQL, so every API replica counts against one limit.

A window opens at a key's first hit, so a burst is judged as a whole rather than split
by a clock boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pao.db import Conn
from pao.sql import QUERIES


@dataclass(frozen=True)
class Count:
    hits: int
    reset_seconds: int  # until the window ends


def _count(row: dict[str, object] | None) -> Count | None:
    if row is None:
        return None
    return Count(hits=int(str(row["hits"])), reset_seconds=max(1, int(str(row["reset_seconds"]))))


async def hit(conn: Conn, key: str, *, window: int) -> Count:
    """Count one hit for `key` in its current window of `window` seconds."""
    cur = await conn.execute(QUERIES["rate_counter_hit"], {"key": key, "window": window})
    count = _count(await cur.fetchone())
    assert count is not None
    return count


async def current(conn: Conn, key: str, *, window: int) -> Count | None:
    """The hits counted for `key` in its current window, if any."""
    cur = await conn.execute(QUERIES["rate_counter_get"], {"key": key, "window": window})
    return _count(await cur.fetchone())


async def prune(conn: Conn, *, now: datetime, limit: int) -> int:
    """Delete up to `limit` counters idle for an hour; returns how many."""
    cur = await conn.execute(QUERIES["rate_counter_prune"], {"now": now, "limit": limit})
    return cur.rowcount
