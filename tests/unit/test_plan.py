"""The misfire rules, as a pure function of the schedule and the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pao.schedule import parse_schedule
from pao.vocabulary import MisfirePolicy
from scheduler.plan import MAX_CATCH_UP, Plan, plan

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MINUTELY = parse_schedule("cron", "* * * * *", "UTC", created_at=T0)


def _plan(policy: MisfirePolicy, *, now: datetime, grace: int = 300, start: datetime = T0) -> Plan:
    return plan(
        MINUTELY,
        next_run_at=start,
        policy=policy,
        grace_seconds=grace,
        now=now,
        horizon=now + timedelta(seconds=5),
    )


def test_on_time_occurrences_are_queued_up_to_the_horizon() -> None:
    p = plan(
        MINUTELY,
        next_run_at=T0,
        policy=MisfirePolicy.COALESCE,
        grace_seconds=300,
        now=T0 - timedelta(seconds=3),
        horizon=T0 + timedelta(seconds=65),
    )
    assert p.queue == [(T0, None), (T0 + timedelta(minutes=1), None)]
    assert p.verdicts == []
    assert p.next_run_at == T0 + timedelta(minutes=2)


def test_a_little_late_is_not_a_misfire() -> None:
    p = _plan(MisfirePolicy.SKIP, now=T0 + timedelta(seconds=4))
    assert p.queue == [(T0, None)]


def test_coalesce_runs_the_latest_late_one_and_misses_those_past_grace() -> None:
    now = T0 + timedelta(minutes=10, seconds=30)
    p = _plan(MisfirePolicy.COALESCE, now=now)
    late_in_grace = [T0 + timedelta(minutes=m) for m in range(6, 11)]  # 12:06..12:10
    assert p.queue[0][0] == late_in_grace[-1]
    assert len(p.queue) == 1
    verdicts = {v.nominal_at: v for v in p.verdicts}
    for t in late_in_grace[:-1]:
        assert verdicts[t].decision == "coalesced"
        assert verdicts[t].into == late_in_grace[-1]
    for m in range(6):
        assert verdicts[T0 + timedelta(minutes=m)].decision == "missed"
    assert p.next_run_at == T0 + timedelta(minutes=11)


def test_skip_queues_nothing_late() -> None:
    p = _plan(MisfirePolicy.SKIP, now=T0 + timedelta(minutes=3, seconds=30))
    assert p.queue == []
    assert [v.decision for v in p.verdicts] == ["missed"] * 4


def test_all_queues_each_late_one_within_grace_up_to_the_cap() -> None:
    p = _plan(MisfirePolicy.ALL, now=T0 + timedelta(minutes=3, seconds=30))
    assert [q[0] for q in p.queue] == [T0 + timedelta(minutes=m) for m in range(4)]
    many = _plan(MisfirePolicy.ALL, now=T0 + timedelta(minutes=150), grace=100_000)
    late_queued = [q for q in many.queue if q[1] is not None]
    assert len(late_queued) == MAX_CATCH_UP  # plus the one due right now, on time
    assert len(many.queue) == MAX_CATCH_UP + 1
    assert sum(v.decision == "missed" for v in many.verdicts) == 150 - MAX_CATCH_UP


def test_every_nominal_time_gets_exactly_one_outcome() -> None:
    now = T0 + timedelta(minutes=42, seconds=7)
    for policy in MisfirePolicy:
        p = _plan(policy, now=now, grace=600)
        seen = [q[0] for q in p.queue] + [v.nominal_at for v in p.verdicts]
        assert sorted(seen) == [T0 + timedelta(minutes=m) for m in range(43)], policy


def test_a_once_task_that_was_missed_is_finished() -> None:
    once = parse_schedule("once", "2026-06-01T12:00:00Z", "UTC", created_at=T0)
    p = plan(
        once,
        next_run_at=T0,
        policy=MisfirePolicy.COALESCE,
        grace_seconds=60,
        now=T0 + timedelta(hours=1),
        horizon=T0 + timedelta(hours=1, seconds=5),
    )
    assert p.queue == []
    assert p.finished
    on_time = plan(
        once,
        next_run_at=T0,
        policy=MisfirePolicy.COALESCE,
        grace_seconds=60,
        now=T0 - timedelta(seconds=2),
        horizon=T0 + timedelta(seconds=3),
    )
    assert on_time.queue == [(T0, None)]
    assert not on_time.finished
