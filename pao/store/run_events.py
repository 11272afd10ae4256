"""No table: `pg_notify` for live run streams; run events out, watch announcements in."""

from __future__ import annotations

from psycopg.types.json import Json

from pao.db import Conn
from pao.sql import QUERIES


async def publish(conn: Conn, payloads: list[str]) -> None:
    """Queue run events on `pao_run_events`; they go out when the caller's transaction commits."""
    if payloads:
        await conn.execute(QUERIES["run_event_publish"], {"payloads": Json(payloads)})


async def announce(conn: Conn, payload: str) -> None:
    """Say on `pao_streams` which tasks are watched (or "?" to ask who watches what)."""
    await conn.execute(QUERIES["run_stream_announce"], {"payload": payload})
