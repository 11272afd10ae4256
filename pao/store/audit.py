"""`audit_log`: the append-only audit log."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn
from pao.sql import QUERIES


async def record(
    conn: Conn,
    *,
    actor_id: uuid.UUID | None,
    action: str,
    target_type: str,
    target_id: object,
    request_id: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one row in the caller's transaction, so it commits with the change it describes."""
    await conn.execute(
        QUERIES["audit_insert"],
        {
            "actor_id": actor_id,
            "action": action,
            "target_type": target_type,
            "target_id": None if target_id is None else str(target_id),
            "request_id": request_id,
            "detail": Jsonb(detail or {}),
        },
    )
