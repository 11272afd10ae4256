"""Money and the windows it is counted in: pure functions, no database.

A cost is a `Decimal` from 0 to MAX_COST with at most MAX_PLACES decimal places: stored
as `numeric`, sent in JSON as a string (as `cost_per_call` always was), never a float.
An agent's spending is counted per window of its zone: the hour (from the top of the
hour), the day (from local midnight) and the month (from local midnight on the 1st).
Every bound is worked out from an explicit `now` with the pinned `tzdata` zones, so the
tests drive time and a DST day is 23 or 25 hours long, as the wall clock says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from pao.errors import PaoError

MAX_COST = 1_000_000_000
"""The largest cost a tool, a task type, a completed step or a budget may state."""
MAX_PLACES = 6
"""Decimal places a cost may have: a millionth of the unit, whatever the unit is."""
MAX_DIGITS = 16
ZERO = Decimal(0)


class CostError(PaoError):
    """Not a cost: a number from 0 to 1e9 with at most 6 decimal places."""


def parse_cost(value: object, where: str) -> Decimal:
    """`value` (a number, or its text) as a cost; CostError naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise CostError(f"{where}: must be a number, got {type(value).__name__}")
    try:
        cost = Decimal(str(value).strip())
    except InvalidOperation:
        raise CostError(f"{where}: {str(value)[:40]!r} is not a number") from None
    if not cost.is_finite():
        raise CostError(f"{where}: must be a finite number, got {value}")
    if not ZERO <= cost <= MAX_COST:
        raise CostError(f"{where}: must be between 0 and {MAX_COST}, got {value}")
    exponent = cost.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if -exponent > MAX_PLACES:
        raise CostError(f"{where}: at most {MAX_PLACES} decimal places, got {value}")
    return cost


def text(cost: Decimal | None) -> str:
    """A cost as JSON carries it: its exact decimal text, "0" for none."""
    if cost is None:
        return "0"
    return format(cost.normalize(), "f")


@dataclass(frozen=True)
class Window:
    """A half-open stretch of time [starts_at, ends_at) in UTC."""

    starts_at: datetime
    ends_at: datetime

    def seconds_left(self, now: datetime) -> int:
        """Whole seconds until the window ends (at least 1): a Retry-After."""
        return max(1, math.ceil((self.ends_at - now).total_seconds()))


@dataclass(frozen=True)
class Windows:
    """The hour, day and month of an agent's zone that `now` falls in."""

    hour: Window
    day: Window
    month: Window


def _midnight(year: int, month: int, day: int, zone: ZoneInfo) -> datetime:
    """The first instant of a local date. Where a zone skips midnight (a DST change at
    00:00), the wall time does not exist and fold 0 reads it with the offset before the
    change: exactly the instant the day begins."""
    return datetime(year, month, day, tzinfo=zone).astimezone(UTC)


def windows(now: datetime, zone: ZoneInfo) -> Windows:
    """The windows `now` (aware) falls in, in `zone`."""
    local = now.astimezone(zone)
    # The top of the local hour, counted back from the instant itself: right across a DST
    # change, where the wall clock repeats or skips an hour.
    hour_start = now.astimezone(UTC) - timedelta(
        minutes=local.minute, seconds=local.second, microseconds=local.microsecond
    )
    day_start = _midnight(local.year, local.month, local.day, zone)
    tomorrow = local.date() + timedelta(days=1)
    day_end = _midnight(tomorrow.year, tomorrow.month, tomorrow.day, zone)
    month_start = _midnight(local.year, local.month, 1, zone)
    next_year, next_month = (
        (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    )
    month_end = _midnight(next_year, next_month, 1, zone)
    return Windows(
        hour=Window(hour_start, hour_start + timedelta(hours=1)),
        day=Window(day_start, day_end),
        month=Window(month_start, month_end),
    )
