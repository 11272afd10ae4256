"""`agents`: agents and their tokens."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from pao import tokens
from pao.db import Conn, model_row
from pao.models import Agent
from pao.sql import QUERIES

LIMIT_FIELDS = ("budget_per_day", "budget_per_month", "max_runs_per_hour", "timezone")
"""An agent's budgets, run rate and their zone: set by an admin only."""


@dataclass(frozen=True)
class NewAgent:
    agent: Agent
    token: str  # shown once, never stored


async def create_agent(
    conn: Conn,
    *,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    token: str | None = None,
) -> NewAgent:
    token = token or tokens.new_token()
    async with conn.cursor(row_factory=model_row(Agent)) as cur:
        await cur.execute(
            QUERIES["agent_insert"],
            {
                "name": name,
                "token_hash": tokens.token_hash(token),
                "token_prefix": tokens.display_prefix(token),
                "scopes": scopes,
                "expires_at": expires_at,
            },
        )
        agent = await cur.fetchone()
    assert agent is not None
    return NewAgent(agent, token)


async def token_exists(conn: Conn, token: str) -> bool:
    cur = await conn.execute(
        QUERIES["agent_exists_by_token_hash"], {"token_hash": tokens.token_hash(token)}
    )
    return await cur.fetchone() is not None


async def get_agent(conn: Conn, agent_id: uuid.UUID) -> Agent | None:
    async with conn.cursor(row_factory=model_row(Agent)) as cur:
        await cur.execute(QUERIES["agent_get"], {"id": agent_id})
        return await cur.fetchone()


async def list_agents(
    conn: Conn, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Agent]:
    async with conn.cursor(row_factory=model_row(Agent)) as cur:
        await cur.execute(
            QUERIES["agent_list"],
            {
                "limit": limit,
                "after_created": after[0] if after else None,
                "after_id": after[1] if after else None,
            },
        )
        return await cur.fetchall()


async def update_agent(
    conn: Conn,
    agent_id: uuid.UUID,
    *,
    name: str | None = None,
    scopes: list[str] | None = None,
    disabled: bool | None = None,
    set_expires: bool = False,
    expires_at: datetime | None = None,
    set_task_types: bool = False,
    task_types: list[str] | None = None,
    limits: Mapping[str, object] | None = None,
) -> Agent | None:
    """Change the fields given; `limits` sets any of budget_per_day, budget_per_month,
    max_runs_per_hour and timezone (None values clear them)."""
    limits = limits or {}
    async with conn.cursor(row_factory=model_row(Agent)) as cur:
        await cur.execute(
            QUERIES["agent_update"],
            {
                "id": agent_id,
                "name": name,
                "scopes": scopes,
                "disabled": disabled,
                "set_expires": set_expires,
                "expires_at": expires_at,
                "set_task_types": set_task_types,
                "task_types": task_types,
                **{
                    key: value
                    for name in LIMIT_FIELDS
                    for key, value in ((f"set_{name}", name in limits), (name, limits.get(name)))
                },
            },
        )
        return await cur.fetchone()


async def count_usable_admins(conn: Conn) -> int:
    cur = await conn.execute(QUERIES["agent_count_usable_admins"])
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def delete_agent(conn: Conn, agent_id: uuid.UUID) -> bool:
    cur = await conn.execute(QUERIES["agent_delete"], {"id": agent_id})
    return await cur.fetchone() is not None


async def task_types_of(conn: Conn, agent_id: uuid.UUID) -> list[str] | None:
    """The task types the agent may claim; None: any."""
    cur = await conn.execute(QUERIES["agent_task_types"], {"id": agent_id})
    row = await cur.fetchone()
    return None if row is None else row["task_types"]
