"""Budgets: what an agent may still spend and start, counted in PostgreSQL.

Every change to an agent's figures (`agent_spending`, the reservations of its live
occurrences) happens under one transaction-level advisory lock on the agent, and the
figures are read after the lock is granted: the scheduler, every API replica and every
worker see one figure, and two workers never both spend its last unit.

- **Admission** (the scheduler's materialise, `run_now`, an event's fan-out) looks only at
  owners with a budget or a run rate (`limited`). Each occurrence needs room for its
  estimated cost (`tasks.cost_estimate`, the sum of its steps' declared costs) in the
  owner's day and month, next to what is spent and what live occurrences hold reserved,
  and room for one more run in the hour. An admitted occurrence reserves its estimate.
- **Charging** (the worker, before each paid step): the step's declared cost must fit the
  task's `budget_per_run` beside what the run was charged, and the owner's day and month
  beside what is spent. A charge within the run's own reservation needs only the spent
  figure to leave room (the reservation was made for it); a charge beyond it must also
  leave room for other occurrences' reservations. What the run reserved is consumed first.
- **Remote costs**: a remote step is charged its declared cost when offered, and the actual
  `cost` its worker reports replaces it (the difference is added, even past a budget: it
  was spent; new work then stops).

Spending is counted for every agent that spends, budget or not (`GET /agents/{id}/usage`);
free steps and unlimited owners never touch any of this.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from pao.costs import ZERO, Window, Windows, text, windows
from pao.db import Conn
from pao.errors import BudgetExceeded, InvalidInput, NotFound, RateLimited, RunRateLimited
from pao.models import Agent
from pao.store import assets as asset_store
from pao.store import spending
from pao.store.spending import Limits
from pao.visibility import may_see
from pao.vocabulary import BudgetPeriod, Decision
from pao.zones import get_zone

HOUR, DAY, MONTH = BudgetPeriod.HOUR, BudgetPeriod.DAY, BudgetPeriod.MONTH


def zone_of(limits: Limits, default_timezone: str) -> ZoneInfo:
    """The zone an agent's days and months are counted in."""
    try:
        return get_zone(limits.timezone or default_timezone)
    except InvalidInput:  # a zone the pinned tzdata dropped: count in UTC rather than fail
        return get_zone("UTC")


@dataclass(frozen=True)
class Refusal:
    """Why an occurrence or a step may not go on, and when that may change."""

    decision: Decision  # over_budget or rate_limited
    detail: str
    retry_after: int  # seconds until the window that refused it resets

    def error(self) -> RateLimited:
        """What a caller told at once (run_now, an event) gets: a 429 with Retry-After."""
        if self.decision is Decision.RATE_LIMITED:
            return RunRateLimited(self.detail, retry_after=self.retry_after)
        return BudgetExceeded(self.detail, retry_after=self.retry_after)


def _local(window: Window, zone: ZoneInfo) -> str:
    return window.ends_at.astimezone(zone).isoformat()


def _over(
    what: str,
    budget: Decimal,
    spent: Decimal,
    reserved: Decimal,
    needed: Decimal,
    window: Window,
    zone: ZoneInfo,
    now: datetime,
) -> Refusal:
    held = f" and {text(reserved)} reserved by runs under way" if reserved else ""
    return Refusal(
        Decision.OVER_BUDGET,
        f"the agent's {what} of {text(budget)} has no room for {text(needed)}: "
        f"{text(spent)} spent{held}; it resets at {_local(window, zone)} ({zone.key}). "
        "Ask an admin to raise it (PUT /agents/{id}), or wait",
        window.seconds_left(now),
    )


def _room(budget: Decimal | None, spent: Decimal, reserved: Decimal, needed: Decimal) -> bool:
    """Whether `needed` more fits a budget beside what is spent and reserved. Once the spent
    figure reaches the budget nothing more fits, not even a run estimated to cost nothing."""
    if budget is None:
        return True
    if needed == ZERO:
        return spent < budget
    return spent + reserved + needed <= budget


@dataclass
class Admission:
    """One owner's admission of a batch of occurrences, under its spending lock."""

    limits: Limits
    zone: ZoneInfo
    now: datetime
    w: Windows
    state: spending.State
    admitted: int = 0
    reserving: Decimal = ZERO  # reserved by this batch so far

    def decide(self, estimate: Decimal) -> Refusal | None:
        """Admit one more occurrence estimated to cost `estimate`, or say why not."""
        limits, s = self.limits, self.state
        reserved = s.reserved + self.reserving
        for what, budget, spent, window in (
            ("budget_per_month", limits.budget_per_month, s.month_spent, self.w.month),
            ("budget_per_day", limits.budget_per_day, s.day_spent, self.w.day),
        ):
            if budget is not None and not _room(budget, spent, reserved, estimate):
                return _over(what, budget, spent, reserved, estimate, window, self.zone, self.now)
        cap = limits.max_runs_per_hour
        if cap is not None and s.hour_runs + self.admitted >= cap:
            return Refusal(
                Decision.RATE_LIMITED,
                f"the agent has started {s.hour_runs + self.admitted} runs this hour, its "
                f"max_runs_per_hour ({cap}); the hour ends at {_local(self.w.hour, self.zone)}",
                self.w.hour.seconds_left(self.now),
            )
        self.admitted += 1
        if limits.budgeted:
            self.reserving += estimate
        return None

    async def record(self, conn: Conn, queued: dict[int, Decimal], runs: int) -> None:
        """Note what was queued: `runs` more this hour, and each queued occurrence's
        reservation (due_work id → estimate)."""
        if self.limits.max_runs_per_hour is not None and runs:
            await spending.add(conn, self.limits.id, [(HOUR, self.w.hour, ZERO, runs)])
        amounts = {i: a for i, a in queued.items() if a > ZERO}
        if self.limits.budgeted and amounts:
            await spending.reserve(conn, self.limits.id, amounts)


async def limited(conn: Conn, owners: list[uuid.UUID]) -> dict[uuid.UUID, Limits]:
    """The owners among these that have a budget or a run rate: only they need admitting."""
    return await spending.limited(conn, sorted(set(owners)))


async def admission(
    conn: Conn, owner: uuid.UUID, *, now: datetime, default_timezone: str
) -> Admission | None:
    """Lock the owner's spending for this transaction and read its figures; None if the
    owner has no budget and no run rate (any longer)."""
    limits = await spending.lock(conn, owner)
    if limits is None or not (limits.budgeted or limits.max_runs_per_hour is not None):
        return None
    zone = zone_of(limits, default_timezone)
    w = windows(now, zone)
    return Admission(limits, zone, now, w, await spending.state(conn, owner, w))


@dataclass(frozen=True)
class Charge:
    """A step's cost to charge: whose run, and the run's own ceiling."""

    owner: uuid.UUID
    run_id: uuid.UUID
    step_id: str
    cost: Decimal
    budget_per_run: Decimal | None
    worker_id: str | None = None  # the run's lease holder: a lost lease charges nothing


async def charge(
    conn: Conn, c: Charge, *, now: datetime, default_timezone: str
) -> Refusal | Decimal | None:
    """Charge a step before it starts, in the caller's transaction: the run's new cost, or
    why it may not start (nothing is charged then); None if `worker_id` no longer holds
    the run (nothing is charged either)."""
    limits = await spending.lock(conn, c.owner) or Limits(c.owner)
    zone = zone_of(limits, default_timezone)
    w = windows(now, zone)
    run_cost, reserved_here = await spending.run_cost(conn, c.run_id)
    if c.budget_per_run is not None and run_cost + c.cost > c.budget_per_run:
        return Refusal(
            Decision.OVER_BUDGET,
            f"budget_exceeded: step {c.step_id} costs {text(c.cost)} and the run has been "
            f"charged {text(run_cost)}: more than the task's budget_per_run of "
            f"{text(c.budget_per_run)}",
            1,
        )
    used = min(reserved_here, c.cost)
    beyond = c.cost - used
    if limits.budgeted:
        s = await spending.state(conn, c.owner, w)
        for what, budget, spent, window in (
            ("budget_per_month", limits.budget_per_month, s.month_spent, w.month),
            ("budget_per_day", limits.budget_per_day, s.day_spent, w.day),
        ):
            if budget is None:
                continue
            fits = spent + c.cost <= budget and (
                beyond == ZERO or spent + s.reserved + beyond <= budget
            )
            if not fits:
                refusal = _over(what, budget, spent, s.reserved, c.cost, window, zone, now)
                return Refusal(
                    refusal.decision,
                    f"budget_exceeded: step {c.step_id}: {refusal.detail}",
                    refusal.retry_after,
                )
    cost = await spending.charge_run(conn, c.run_id, cost=c.cost, used=used, worker_id=c.worker_id)
    if cost is not None:
        await spending.add(conn, c.owner, [(DAY, w.day, c.cost, 0), (MONTH, w.month, c.cost, 0)])
    return cost


async def adjust(
    conn: Conn,
    *,
    owner: uuid.UUID,
    run_id: uuid.UUID,
    delta: Decimal,
    now: datetime,
    default_timezone: str,
) -> Decimal:
    """A remote step cost `delta` more (or less) than it was charged: add it to the run and
    the owner's windows, unchecked (it was spent). The run's new cost."""
    limits = await spending.lock(conn, owner) or Limits(owner)
    w = windows(now, zone_of(limits, default_timezone))
    await spending.add(conn, owner, [(DAY, w.day, delta, 0), (MONTH, w.month, delta, 0)])
    return await spending.charge_run(conn, run_id, cost=delta, used=ZERO) or delta


@dataclass(frozen=True)
class Usage:
    """An agent's runs, cost and asset bytes in its current day and month, its limits and
    what remains."""

    limits: Limits
    zone: ZoneInfo
    w: Windows
    figures: spending.Usage
    assets: asset_store.UsageBytes

    def remaining(self, budget: Decimal | None, spent: Decimal) -> Decimal | None:
        if budget is None:
            return None
        return max(ZERO, budget - spent - self.figures.reserved)


async def usage(
    conn: Conn, actor: Agent, agent_id: uuid.UUID, *, now: datetime, default_timezone: str
) -> Usage:
    """An agent's usage, for itself or an admin: another agent's is NotFound, as if it did
    not exist."""
    limits = await spending.limits_of(conn, agent_id) if may_see(actor, agent_id) else None
    if limits is None:
        raise NotFound(f"no agent {agent_id}")
    zone = zone_of(limits, default_timezone)
    w = windows(now, zone)
    kept = await asset_store.usage_windows(
        conn,
        agent_id,
        day=(w.day.starts_at, w.day.ends_at),
        month=(w.month.starts_at, w.month.ends_at),
    )
    return Usage(limits, zone, w, await spending.usage(conn, agent_id, w), kept)
