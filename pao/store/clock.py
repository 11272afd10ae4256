"""The database server's clock, read once (see `pao.clock`)."""

from __future__ import annotations

from datetime import datetime

from pao.db import Conn
from pao.sql import QUERIES


async def read(conn: Conn) -> datetime:
    """The server's `clock_timestamp()`: its time now, not its transaction's start."""
    cur = await conn.execute(QUERIES["clock_read"])
    row = await cur.fetchone()
    assert row is not None
    at: datetime = row["at"]
    return at
