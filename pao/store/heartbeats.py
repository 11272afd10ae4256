"""`process_heartbeats`: written by long-running processes and read by /health."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Any

from pao.db import Conn
from pao.sql import QUERIES


async def beat(conn: Conn, *, process_id: str, kind: str) -> None:
    """This process is alive: its host and pid go with its id, for /health to show."""
    await conn.execute(
        QUERIES["heartbeat_beat"],
        {
            "process_id": process_id,
            "kind": kind,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        },
    )


async def remove(conn: Conn, process_id: str) -> None:
    await conn.execute(QUERIES["heartbeat_remove"], {"process_id": process_id})


async def list_heartbeats(conn: Conn) -> list[dict[str, Any]]:
    cur = await conn.execute(QUERIES["heartbeat_list"])
    return list(await cur.fetchall())


async def prune(conn: Conn, *, before: datetime) -> int:
    cur = await conn.execute(QUERIES["heartbeat_prune"], {"before": before})
    return cur.rowcount
