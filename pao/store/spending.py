"""`agent_spending` and reservations: the figures budgets are checked against."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from psycopg.types.json import Jsonb

from pao.costs import ZERO, Window, Windows
from pao.db import Conn, model_row
from pao.sql import QUERIES
from pao.vocabulary import BudgetPeriod

LOCK_SPACE = 0x5041_4F02
"""First key of the advisory locks that serialise changes to one agent's spending."""


@dataclass(frozen=True)
class Limits:
    """An agent's budgets and run rate (None: none), and the zone of its windows."""

    id: uuid.UUID
    budget_per_day: Decimal | None = None
    budget_per_month: Decimal | None = None
    max_runs_per_hour: int | None = None
    timezone: str | None = None

    @property
    def budgeted(self) -> bool:
        return self.budget_per_day is not None or self.budget_per_month is not None


@dataclass(frozen=True)
class State:
    """An agent's figures in its current windows."""

    day_spent: Decimal
    month_spent: Decimal
    hour_runs: int
    reserved: Decimal  # held by its live occurrences, not yet spent


async def lock(conn: Conn, agent_id: uuid.UUID) -> Limits | None:
    """Take the agent's spending lock for this transaction; its limits (None: no agent)."""
    async with conn.cursor(row_factory=model_row(Limits)) as cur:
        await cur.execute(
            QUERIES["agent_spending_lock"], {"agent_id": agent_id, "lock_space": LOCK_SPACE}
        )
        return await cur.fetchone()


async def limited(conn: Conn, agent_ids: list[uuid.UUID]) -> dict[uuid.UUID, Limits]:
    """The limits of those of these agents that have any, by id."""
    if not agent_ids:
        return {}
    async with conn.cursor(row_factory=model_row(Limits)) as cur:
        await cur.execute(QUERIES["agent_limits_many"], {"ids": agent_ids})
        return {found.id: found for found in await cur.fetchall()}


async def limits_of(conn: Conn, agent_id: uuid.UUID) -> Limits | None:
    """An agent's limits and zone, whether or not it has any."""
    async with conn.cursor(row_factory=model_row(Limits)) as cur:
        await cur.execute(QUERIES["agent_limits_get"], {"id": agent_id})
        return await cur.fetchone()


def _starts(w: Windows) -> dict[str, datetime]:
    return {"hour": w.hour.starts_at, "day": w.day.starts_at, "month": w.month.starts_at}


async def state(conn: Conn, agent_id: uuid.UUID, w: Windows) -> State:
    cur = await conn.execute(QUERIES["agent_spending_state"], {"agent_id": agent_id, **_starts(w)})
    row = await cur.fetchone()
    assert row is not None
    return State(
        day_spent=row["day_spent"] or ZERO,
        month_spent=row["month_spent"] or ZERO,
        hour_runs=int(row["hour_runs"] or 0),
        reserved=row["reserved"] or ZERO,
    )


async def add(
    conn: Conn,
    agent_id: uuid.UUID,
    changes: list[tuple[BudgetPeriod, Window, Decimal, int]],
) -> None:
    """Add (period, window, spent, runs) to the agent's windows."""
    if not changes:
        return
    await conn.execute(
        QUERIES["agent_spending_add"],
        {
            "agent_id": agent_id,
            "periods": [str(c[0]) for c in changes],
            "starts": [c[1].starts_at for c in changes],
            "ends": [c[1].ends_at for c in changes],
            "spent": [c[2] for c in changes],
            "runs": [c[3] for c in changes],
        },
    )


async def run_cost(conn: Conn, run_id: uuid.UUID) -> tuple[Decimal, Decimal]:
    """What the run was charged so far, and what its occurrence still holds reserved."""
    cur = await conn.execute(QUERIES["agent_spending_run_cost"], {"run_id": run_id})
    row = await cur.fetchone()
    if row is None:
        return ZERO, ZERO
    return row["cost"] or ZERO, row["reserved"] or ZERO


async def charge_run(
    conn: Conn, run_id: uuid.UUID, *, cost: Decimal, used: Decimal, worker_id: str | None = None
) -> Decimal | None:
    """Add `cost` to the run and take `used` off its occurrence's reservation; the run's
    new cost, or None if `worker_id` (when given) no longer holds the run's lease."""
    cur = await conn.execute(
        QUERIES["agent_spending_charge_run"],
        {"run_id": run_id, "cost": cost, "used": used, "worker_id": worker_id},
    )
    row = await cur.fetchone()
    return row["cost"] if row else None


async def reserve(conn: Conn, agent_id: uuid.UUID, amounts: dict[int, Decimal]) -> None:
    """Admitted occurrences (due_work id → estimated cost) hold their amounts reserved."""
    if amounts:
        await conn.execute(
            QUERIES["agent_spending_reserve"],
            {
                "agent_id": agent_id,
                "batch": Jsonb([{"id": i, "amount": str(a)} for i, a in amounts.items()]),
            },
        )


@dataclass(frozen=True)
class Usage:
    day_runs: int
    month_runs: int
    day_spent: Decimal
    month_spent: Decimal
    hour_runs: int
    reserved: Decimal


async def usage(conn: Conn, agent_id: uuid.UUID, w: Windows) -> Usage:
    figures = await state(conn, agent_id, w)
    cur = await conn.execute(
        QUERIES["agent_spending_run_counts"],
        {
            "agent_id": agent_id,
            "day": w.day.starts_at,
            "day_end": w.day.ends_at,
            "month": w.month.starts_at,
            "month_end": w.month.ends_at,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return Usage(
        day_runs=int(row["day_runs"]),
        month_runs=int(row["month_runs"]),
        day_spent=figures.day_spent,
        month_spent=figures.month_spent,
        hour_runs=figures.hour_runs,
        reserved=figures.reserved,
    )


async def prune(conn: Conn, *, before: datetime, limit: int) -> int:
    cur = await conn.execute(QUERIES["agent_spending_prune"], {"before": before, "limit": limit})
    return cur.rowcount
