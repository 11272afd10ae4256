"""What to do with a task's due occurrences: a pure function, so every rule is unit-testable.

An occurrence is *late* when the scheduler reaches it more than `LATE_AFTER`
after its time (the scheduler was down, or the database was). Late
occurrences follow the task's misfire policy:

- `coalesce`: those within the grace become one run, at the latest of them;
- `skip`: none runs;
- `all`: each runs, at most `MAX_CATCH_UP` of them (the most recent);

and any older than `misfire_grace_seconds` is missed whatever the policy.
Occurrences that are not late are queued at their own time, including those
up to the look-ahead horizon, so a waiting worker starts them on time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pao.schedule import Budget, Schedule
from pao.vocabulary import Decision, MisfirePolicy

LATE_AFTER = timedelta(seconds=5)
MAX_CATCH_UP = 100
# Occurrences one task may settle in one tick; the rest wait for the next.
MAX_PER_TICK = 10_000


@dataclass(frozen=True)
class Verdict:
    """A nominal time that is not queued by itself, and why."""

    nominal_at: datetime
    decision: Decision  # missed or coalesced
    detail: str
    into: datetime | None = None  # coalesced: the occurrence that runs for it


@dataclass
class Plan:
    queue: list[tuple[datetime, str | None]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    next_run_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Nothing left to fire and nothing queued now: the task is done."""
        return self.next_run_at is None and not self.queue


def plan(
    schedule: Schedule,
    *,
    next_run_at: datetime,
    policy: MisfirePolicy,
    grace_seconds: int,
    now: datetime,
    horizon: datetime,
    budget: Budget | None = None,
) -> Plan:
    """What to do with a task's occurrences from `next_run_at` up to `horizon`.

    The fire times come from one walk over the schedule within one `budget` (InvalidInput
    when it runs out), not a fresh search per occurrence: a rule that re-reads its year
    to find each next time would otherwise cost a year's walls for every occurrence.
    """
    times: list[datetime] = []
    following: datetime | None = next_run_at
    if next_run_at <= horizon:
        times.append(next_run_at)
        following = None
        for t in schedule.fires(next_run_at, budget or Budget()):
            if t > horizon or len(times) >= MAX_PER_TICK:
                following = t
                break
            times.append(t)
    result = Plan(next_run_at=following)

    late_before = now - LATE_AFTER
    grace_before = now - timedelta(seconds=grace_seconds)
    late = [x for x in times if x < late_before]
    on_time = [x for x in times if x >= late_before]
    within = [x for x in late if x >= grace_before]
    for x in late:
        if x < grace_before:
            result.verdicts.append(
                Verdict(
                    x, Decision.MISSED, f"more than misfire_grace_seconds ({grace_seconds}) late"
                )
            )
    if within and policy == MisfirePolicy.SKIP:
        result.verdicts += [
            Verdict(x, Decision.MISSED, "late, and misfire_policy is skip") for x in within
        ]
    elif within and policy == MisfirePolicy.COALESCE:
        last = within[-1]
        for x in within[:-1]:
            result.verdicts.append(
                Verdict(
                    x,
                    Decision.COALESCED,
                    f"late; runs as the occurrence of {last.isoformat()}",
                    last,
                )
            )
        note = f"late by {(now - last).total_seconds():.0f}s"
        if len(within) > 1:
            note += f"; {len(within) - 1} earlier late occurrences coalesced into it"
        result.queue.append((last, note))
    elif within:  # all
        for x in within[:-MAX_CATCH_UP]:
            result.verdicts.append(
                Verdict(
                    x, Decision.MISSED, f"more than {MAX_CATCH_UP} late occurrences to catch up"
                )
            )
        result.queue += [
            (x, f"late by {(now - x).total_seconds():.0f}s") for x in within[-MAX_CATCH_UP:]
        ]
    result.queue += [(x, None) for x in on_time]
    return result
