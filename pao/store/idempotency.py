"""`idempotency_keys`: Idempotency-Key records for POST /tasks and POST /events.

The key is taken in its own committed transaction before the work starts, so
a concurrent duplicate sees it at once (409) instead of blocking; the response
is stored in the same transaction as the work, so a replay returns exactly
what the first request's client was (or would have been) told. Keys live for
24 hours.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from pao.db import Conn
from pao.sql import QUERIES
from pao.vocabulary import IdempotencyState


@dataclass(frozen=True)
class Claim:
    outcome: Literal["new", "replay", "in_flight", "mismatch"]
    status: int | None = None
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _key(agent_id: uuid.UUID, endpoint: str, key: str) -> dict[str, Any]:
    return {"agent_id": agent_id, "endpoint": endpoint, "key": key}


async def claim(
    conn: Conn, *, agent_id: uuid.UUID, endpoint: str, key: str, request_hash: bytes
) -> Claim:
    """Take the key for this request, or say why not. Commit right after, before the work."""
    ident = _key(agent_id, endpoint, key)
    await conn.execute(QUERIES["idempotency_forget_expired"], ident)
    cur = await conn.execute(QUERIES["idempotency_claim"], {**ident, "request_hash": request_hash})
    if await cur.fetchone() is not None:
        return Claim("new")
    cur = await conn.execute(QUERIES["idempotency_get"], ident)
    row = await cur.fetchone()
    if row is None:  # released between our insert and read: try once more
        cur = await conn.execute(
            QUERIES["idempotency_claim"], {**ident, "request_hash": request_hash}
        )
        return Claim("new") if await cur.fetchone() is not None else Claim("in_flight")
    if bytes(row["request_hash"]) != request_hash:
        return Claim("mismatch")
    if row["state"] == IdempotencyState.DONE:
        return Claim(
            "replay", row["response_status"], row["response_body"], row["response_headers"] or {}
        )
    if row["stale"]:
        cur = await conn.execute(QUERIES["idempotency_take_over_stale"], ident)
        if await cur.fetchone() is not None:
            return Claim("new")
    return Claim("in_flight")


async def complete(
    conn: Conn,
    *,
    agent_id: uuid.UUID,
    endpoint: str,
    key: str,
    status: int,
    body: str,
    headers: dict[str, str],
) -> None:
    await conn.execute(
        QUERIES["idempotency_complete"],
        {
            **_key(agent_id, endpoint, key),
            "status": status,
            "body": body,
            "headers": Jsonb(headers),
        },
    )


async def release(conn: Conn, *, agent_id: uuid.UUID, endpoint: str, key: str) -> None:
    await conn.execute(QUERIES["idempotency_release"], _key(agent_id, endpoint, key))


async def prune(conn: Conn, *, now: datetime, limit: int) -> int:
    cur = await conn.execute(QUERIES["idempotency_prune"], {"now": now, "limit": limit})
    return cur.rowcount
