"""The history's monthly partitions: created ahead, dropped whole once past the retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pao.db import Conn
from pao.sql import QUERIES


@dataclass(frozen=True)
class Outcome:
    """What became of one partition: made or dropped, or why not (`detail`)."""

    partition_name: str
    done: bool
    detail: str | None


async def ensure(conn: Conn, *, at: datetime, months_ahead: int) -> list[Outcome]:
    """Create the missing partitions of `at`'s month and the `months_ahead` after it."""
    await conn.execute(QUERIES["partitions_lock_timeout"])
    cur = await conn.execute(QUERIES["partitions_ensure"], {"at": at, "months_ahead": months_ahead})
    return [Outcome(r["partition_name"], r["created"], r["detail"]) for r in await cur.fetchall()]


async def drop_before(conn: Conn, *, before: datetime) -> list[Outcome]:
    """Drop the partitions whose month ended before `before`."""
    await conn.execute(QUERIES["partitions_lock_timeout"])
    cur = await conn.execute(QUERIES["partitions_drop"], {"before": before})
    return [Outcome(r["partition_name"], r["dropped"], r["detail"]) for r in await cur.fetchall()]


async def list_partitions(conn: Conn) -> list[tuple[str, str, str]]:
    """(parent, partition, bound) of every partition of the history, by parent and name."""
    cur = await conn.execute(QUERIES["partitions_list"])
    return [(r["parent"], r["partition_name"], r["bound"]) for r in await cur.fetchall()]
