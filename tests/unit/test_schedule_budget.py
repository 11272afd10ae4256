"""Expansion cost: one budget of candidate instants per computation, and a search horizon.

Counted in iterations, not wall time, so these hold on any machine.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta

import pytest

from pao.errors import InvalidInput
from pao.schedule import HORIZON_YEARS, SEARCH_BUDGET, Budget, off_loop, parse_schedule
from pao.vocabulary import MisfirePolicy
from pao.zones import UTC
from scheduler.plan import plan

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
# 29 February on a Monday: once in 28 years, found minute by minute.
HOSTILE = "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR=0;BYMINUTE=0"


def test_a_whole_preview_shares_one_budget_and_is_refused_naming_the_field() -> None:
    schedule = parse_schedule("rrule", HOSTILE, "UTC", created_at=CREATED)
    budget = Budget()
    with pytest.raises(InvalidInput) as info:
        schedule.preview(CREATED, 100, budget=budget)
    (error,) = info.value.errors
    assert error.loc == ("schedule_expr",)
    assert "search" in error.message
    assert budget.spent <= SEARCH_BUDGET + 1440


def test_a_starved_budget_is_refused_not_taken_for_the_end_of_the_rule() -> None:
    schedule = parse_schedule("rrule", HOSTILE, "UTC", created_at=CREATED)
    with pytest.raises(InvalidInput) as info:
        schedule.next_after(CREATED, budget=Budget(5_000))
    assert "search budget" in info.value.errors[0].message


def test_the_search_stops_at_the_horizon() -> None:
    schedule = parse_schedule("rrule", HOSTILE, "UTC", created_at=CREATED)
    budget = Budget()
    got = schedule.upcoming(CREATED, 100, budget=budget)
    # 2100 is no leap year: 2072 to 2112 is the longest wait.
    assert [t.year for t in got] == [2044, 2072, 2112]
    assert all(t < CREATED + timedelta(days=366 * HORIZON_YEARS) for t in got)
    assert budget.spent <= SEARCH_BUDGET


def test_validation_at_create_is_one_budget() -> None:
    """A rule whose first occurrence needs more than one budget is refused at parse time."""
    with pytest.raises(InvalidInput) as info:
        parse_schedule("rrule", HOSTILE, "UTC", created_at=CREATED, budget=Budget(2_000))
    (error,) = info.value.errors
    assert error.loc == ("schedule_expr",)
    assert "search budget" in error.message


def test_a_count_rule_is_expanded_within_one_budget() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_schedule(
            "rrule", HOSTILE + ";COUNT=50", "UTC", created_at=CREATED, budget=Budget(50_000)
        )
    assert "search budget" in info.value.errors[0].message


def test_walls_skipped_before_the_start_are_counted() -> None:
    """A yearly rule naming many times a day re-reads its year up to the start: that work
    is charged, and the scheduler's plan pays it once rather than once per occurrence."""
    hours = ",".join(map(str, range(24)))
    rule = f"FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR={hours};BYMINUTE=0,30"
    schedule = parse_schedule("rrule", rule, "UTC", created_at=CREATED)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    budget = Budget()
    assert schedule.next_after(start, budget=budget) == start + timedelta(minutes=30)
    assert budget.spent > 334 * 48  # every wall from 1 January on was looked at
    budget = Budget()
    planned = plan(
        schedule,
        next_run_at=start,
        policy=MisfirePolicy.ALL,
        grace_seconds=86_400,
        now=start,
        horizon=start + timedelta(hours=12),
        budget=budget,
    )
    assert len(planned.queue) == 25
    assert budget.spent < 3 * 335 * 48  # the year read once, not once per occurrence


def test_plan_shares_one_budget_and_refuses_when_it_runs_out() -> None:
    schedule = parse_schedule("rrule", "FREQ=MINUTELY", "UTC", created_at=CREATED)
    with pytest.raises(InvalidInput):
        plan(
            schedule,
            next_run_at=CREATED,
            policy=MisfirePolicy.ALL,
            grace_seconds=60,
            now=CREATED,
            horizon=CREATED + timedelta(days=30),
            budget=Budget(1_000),
        )


def test_cron_that_never_fires_is_refused_without_a_search() -> None:
    for expr in ("0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 *"):
        budget = Budget()
        with pytest.raises(InvalidInput) as info:
            parse_schedule("cron", expr, "UTC", created_at=CREATED, budget=budget)
        assert "never fires" in info.value.errors[0].message
        assert budget.spent == 0


def test_cron_search_is_budgeted_and_bounded() -> None:
    # The fifth Friday of February: 29 February on a Friday, every 28 years or so.
    schedule = parse_schedule("cron", "0 0 * 2 5#5", "UTC", created_at=CREATED)
    budget = Budget()
    assert schedule.upcoming(CREATED, 3, budget=budget) == [
        datetime(2036, 2, 29, tzinfo=UTC),
        datetime(2064, 2, 29, tzinfo=UTC),
        datetime(2092, 2, 29, tzinfo=UTC),
    ]
    assert budget.spent < 2_000  # months looked at, not minutes
    with pytest.raises(InvalidInput) as info:
        schedule.preview(CREATED, 10)
    assert "100 years" in info.value.errors[0].message


def test_off_loop_runs_in_a_thread_and_gives_up_at_its_time_limit() -> None:
    caller = threading.get_ident()
    assert asyncio.run(off_loop(threading.get_ident)) != caller
    release = threading.Event()
    try:
        with pytest.raises(InvalidInput) as info:
            asyncio.run(off_loop(lambda: release.wait(30), time_limit=0.05))
        assert info.value.errors[0].loc == ("schedule_expr",)
    finally:
        release.set()
