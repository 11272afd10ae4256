"""`task_types`: the declared kinds of remote step (`pao.domain.task_types` checks them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, model_row
from pao.sql import QUERIES

CHANGED_CHANNEL = "pao_task_types"
"""Notified (with the type's name) whenever a task type is created, changed or deactivated."""


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    parameters_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    metadata: dict[str, Any]
    lease_seconds: int
    cost_per_call: Decimal | None
    is_active: bool
    version: int
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


def _params(fields: dict[str, Any]) -> dict[str, Any]:
    output = fields.get("output_schema")
    return {
        "name": fields["name"],
        "description": fields.get("description", ""),
        "parameters_schema": Jsonb(fields["parameters_schema"]),
        "output_schema": None if output is None else Jsonb(output),
        "metadata": Jsonb(fields.get("metadata") or {}),
        "lease_seconds": fields.get("lease_seconds", 60),
        "cost_per_call": fields.get("cost_per_call"),
        "is_active": fields.get("is_active", True),
    }


async def insert(conn: Conn, fields: dict[str, Any], *, created_by: uuid.UUID) -> TaskType | None:
    """The new type, or None when its name is taken."""
    async with conn.cursor(row_factory=model_row(TaskType)) as cur:
        await cur.execute(
            QUERIES["task_type_insert"], {**_params(fields), "created_by": created_by}
        )
        return await cur.fetchone()


async def get(conn: Conn, name: str) -> TaskType | None:
    async with conn.cursor(row_factory=model_row(TaskType)) as cur:
        await cur.execute(QUERIES["task_type_get"], {"name": name})
        return await cur.fetchone()


async def list_page(
    conn: Conn, *, limit: int, after: str | None, include_inactive: bool
) -> list[TaskType]:
    async with conn.cursor(row_factory=model_row(TaskType)) as cur:
        await cur.execute(
            QUERIES["task_type_list"],
            {"limit": limit, "after": after, "include_inactive": include_inactive},
        )
        return await cur.fetchall()


async def list_active(conn: Conn) -> list[TaskType]:
    async with conn.cursor(row_factory=model_row(TaskType)) as cur:
        await cur.execute(QUERIES["task_type_list_active"])
        return await cur.fetchall()


async def update(conn: Conn, fields: dict[str, Any]) -> TaskType | None:
    async with conn.cursor(row_factory=model_row(TaskType)) as cur:
        await cur.execute(QUERIES["task_type_update"], _params(fields))
        return await cur.fetchone()


async def deactivate(conn: Conn, name: str) -> TaskType | None:
    """The type made inactive, or None if there is no such active type."""
    async with conn.cursor(row_factory=model_row(TaskType)) as cur:
        await cur.execute(QUERIES["task_type_deactivate"], {"name": name})
        return await cur.fetchone()


async def notify_changed(conn: Conn, name: str) -> None:
    """Sent when the caller's transaction commits."""
    await conn.execute(QUERIES["task_type_notify_changed"], {"name": name})
