"""When a task fires: parsing and validating schedules, and computing fire times.

Used by the API (to reject bad input with a helpful 422 and to preview fire
times) and by the scheduler (to find each task's next fire time). All fire
times are aware UTC datetimes; expressions are read in the task's IANA zone,
loaded only through `pao.zones.get_zone`.

Accepted syntax
---------------
cron (and condition, whose expression is a cron saying how often to check):
    exactly five fields: minute hour day-of-month month day-of-week.
    Each field is a comma list of ``*``, ``N``, ``A-B``, optionally followed by
    ``/STEP``; ``N/STEP`` means ``N-max/STEP``. Ranges must run forwards.
    Month names JAN-DEC and day names SUN-SAT (any case) may stand wherever a
    number may. Day-of-week 0 and 7 are both Sunday. Extensions: ``L`` in
    day-of-month (last day of the month), ``D#N`` in day-of-week (N-th weekday
    D of the month, N 1-5) and ``DL`` (last weekday D of the month). Not
    accepted: seconds or year fields, ``@`` macros (``@daily``, ``@reboot``),
    ``?``, ``W``, ``H``. Day matching follows Vixie cron: when both
    day-of-month and day-of-week are restricted a day matching either fires;
    a field that starts with ``*`` (including ``*/N``) counts as unrestricted,
    and then both fields must match. croniter is deliberately not used: it
    reads ``5-5`` as the whole field, accepts wrap-around ranges and mishandles
    DST, so a small parser with exactly these rules is kept here.

rrule:
    one RFC 5545 RRULE, bare (``FREQ=...``) or as ``RRULE:FREQ=...``,
    optionally with one ``DTSTART`` line (``DTSTART:20260101T083000`` local,
    ``...Z`` UTC, ``DTSTART;TZID=Zone/Name:...``, or a date ``DTSTART:20260101``
    meaning local midnight). A UTC or TZID start is converted to the task
    zone's wall time; the rule is then expanded in wall time. Without DTSTART
    the start is ``created_at`` in the task zone with seconds zeroed. Parts:
    FREQ (MINUTELY..YEARLY), INTERVAL, COUNT (at most 5000), UNTIL (date,
    local date-time or UTC ``Z``; a date means through the end of that local
    day), BYMONTH, BYWEEKNO (YEARLY only), BYYEARDAY, BYMONTHDAY, BYDAY,
    BYHOUR, BYMINUTE, one BYSECOND value, BYSETPOS, WKST. RDATE, EXDATE,
    EXRULE and several RRULEs are rejected.

once:
    an ISO 8601 date-time (``datetime.fromisoformat``, trailing ``Z`` allowed);
    without an offset it is the task zone's wall time.

event:
    an event type (letters, digits and ``._:-/``, at most 200 characters) or a
    prefix pattern ending in ``*``; never fires on a clock.

Daylight saving
---------------
A *fixed wall time* (cron whose minute and hour fields have no ``*`` or ``/``,
every rrule, a once without offset) fires once per local time it names: a
time skipped by spring-forward fires shifted by the gap (02:30 -> 03:30), and
a repeated time fires at its first occurrence. A cron with a wildcard or
stepped minute or hour fires at every real instant whose wall clock matches:
never inside a gap, twice in a fall-back overlap.
"""

from __future__ import annotations

import asyncio
import bisect
import calendar
import dataclasses
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import islice
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

from dateutil.rrule import (
    DAILY,
    HOURLY,
    MINUTELY,
    MONTHLY,
    WEEKLY,
    YEARLY,
    rrule,
    rrulestr,
)

from pao.errors import InvalidInput
from pao.vocabulary import ScheduleKind
from pao.zones import UTC, get_zone, offset_bounds

__all__ = [
    "HORIZON_YEARS",
    "KINDS",
    "SEARCH_BUDGET",
    "Budget",
    "Schedule",
    "ScheduleKind",
    "event_matches",
    "off_loop",
    "parse_schedule",
]

KINDS: tuple[str, ...] = tuple(ScheduleKind)

MAX_EXPR_LEN = 1000
MAX_EVENT_LEN = 200
MAX_COUNT = 5000
MAX_INTERVAL = 1000
# No search looks further than this past its start: every cron date pattern and every
# rrule recurs within it (29 February on a given weekday waits at most 40 years).
HORIZON_YEARS = 100
# Candidate instants one computation (a preview, a next-fire search, a validation, one
# scheduler plan) may examine, all of them together: days dateutil filters out, times of
# day it tries, walls read before the start, cron months. A century of days fits, at
# one check a day; about half a second of CPU when spent in full.
SEARCH_BUDGET = 50_000
# Schedule math in the API runs on these threads, and is given up on after this long.
TIME_LIMIT_SECONDS = 5.0
_LAST_YEAR = 9998
_HORIZON = timedelta(days=366 * HORIZON_YEARS)

_EXPR: tuple[str] = ("schedule_expr",)
_MINUTE = timedelta(minutes=1)


def _bad(message: str) -> InvalidInput:
    return InvalidInput.one(_EXPR, message)


class _OutOfBudget(Exception):
    pass


class Budget:
    """How many candidate instants one computation may examine.

    One is made per call (a whole preview, one next-fire search, one validation, one
    scheduler plan) and shared by everything it expands, so a rule that finds an
    occurrence now and then cannot earn a fresh allowance with each one. Counted in
    iterations, not time, so the answer does not depend on the machine's load.
    """

    __slots__ = ("horizon_reached", "limit", "spent")

    def __init__(self, limit: int = SEARCH_BUDGET) -> None:
        self.limit = limit
        self.spent = 0
        # The search stopped at the horizon (or the end of the calendar), not because the
        # rule ended: fewer occurrences than asked for then says nothing about the rule.
        self.horizon_reached = False

    @property
    def exhausted(self) -> bool:
        """Whether a search stopped because this budget ran out."""
        return self.spent > self.limit

    def spend(self, n: int = 1) -> None:
        self.spent += n
        if self.spent > self.limit:
            raise _OutOfBudget


def _too_costly(budget: Budget) -> InvalidInput:
    return _bad(
        "this rule produces no occurrence within the search budget "
        f"({budget.limit} candidate times looked at); make its BY parts coincide more "
        "often or use a coarser FREQ"
    )


_T = TypeVar("_T")
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pao-schedule")


async def off_loop(call: Callable[[], _T], *, time_limit: float = TIME_LIMIT_SECONDS) -> _T:
    """Run schedule math on a thread of its own, so no rule holds the event loop.

    Two threads at most: a flood of costly requests queues here rather than taking
    the default executor, and whatever waits past `time_limit` (queued or running)
    is answered with a 422; the iteration budget ends a running one soon after.
    """
    future = asyncio.get_running_loop().run_in_executor(_POOL, call)
    try:
        return await asyncio.wait_for(future, time_limit)
    except TimeoutError:
        raise _bad(
            f"working out this schedule took longer than {time_limit:g} s; simplify it, "
            "or retry when the server is less busy"
        ) from None


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Schedule:
    """A validated schedule; build it with `parse_schedule`, which also fills the
    private fields that hold the pre-parsed expression so fire times are cheap."""

    kind: ScheduleKind
    expr: str
    zone: ZoneInfo
    _cron: _Cron | None = field(default=None, repr=False, compare=False)
    _rrule: _RRule | None = field(default=None, repr=False, compare=False)
    _once: datetime | None = field(default=None, repr=False, compare=False)

    def next_after(self, after: datetime, *, budget: Budget | None = None) -> datetime | None:
        """First fire time strictly after `after`, or None when it does not fire again
        within `HORIZON_YEARS`; InvalidInput when one budget does not find out."""
        return next(self.fires(after, budget or Budget()), None)

    def upcoming(
        self, after: datetime, count: int, *, budget: Budget | None = None
    ) -> list[datetime]:
        """The next `count` fire times strictly after `after`, ascending and unique; fewer
        when the rule ends or the horizon is reached. One budget for all of them."""
        if count <= 0:
            return []
        return list(islice(self.fires(after, budget or Budget()), count))

    def preview(
        self, after: datetime, count: int, *, budget: Budget | None = None
    ) -> list[datetime]:
        """`upcoming`, for showing: fewer than `count` only when the rule itself ends, so
        a rule too rare to fill the list is a 422 rather than a list that looks final."""
        budget = budget or Budget()
        got = self.upcoming(after, count, budget=budget)
        if len(got) < count and budget.horizon_reached:
            raise _bad(
                f"this rule fires {len(got)} times in the next {HORIZON_YEARS} years (the "
                f"search horizon), fewer than the {count} asked for; ask for fewer"
            )
        return got

    def fires(self, after: datetime, budget: Budget) -> Iterator[datetime]:
        """Fire times strictly after `after`, ascending, all found within `budget`;
        InvalidInput (schedule_expr) from the iteration that would overspend it."""
        try:
            yield from self._fires(after, budget)
        except _OutOfBudget:
            raise _too_costly(budget) from None

    def _fires(self, after: datetime, budget: Budget) -> Iterator[datetime]:
        after = _as_utc(after)
        if self._once is not None:
            if self._once > after:
                yield self._once
            return
        if self._cron is not None:
            yield from _merge(self._cron.walls, self.zone, self._cron.fixed, after, None, budget)
        elif self._rrule is not None:
            spec = self._rrule
            if spec.instants is not None:
                start = bisect.bisect_right(spec.instants, after)
                yield from spec.instants[start:]
            else:
                yield from _merge(spec.walls, self.zone, True, after, spec.until, budget)


def parse_schedule(
    kind: str, expr: str, timezone: str, *, created_at: datetime, budget: Budget | None = None
) -> Schedule:
    """Validate a schedule as the user wrote it; every problem is an `InvalidInput`.

    Proving that a rule fires (and expanding a COUNT rule) shares one `budget`."""
    if kind not in KINDS:
        raise InvalidInput.one(
            ("schedule_kind",),
            f"unknown schedule kind {str(kind)[:50]!r}; use one of {', '.join(KINDS)}",
        )
    if not isinstance(expr, str) or not expr.strip():
        raise _bad(f"a {kind} schedule needs an expression; see the examples in the docs")
    if len(expr) > MAX_EXPR_LEN:
        raise _bad(f"expression is {len(expr)} characters long; shorten it to {MAX_EXPR_LEN}")
    if "\x00" in expr:
        raise _bad("expression contains a NUL character; remove it")
    zone = get_zone(timezone)
    created = _as_utc(created_at)
    skind = ScheduleKind(kind)
    budget = budget or Budget()
    if skind in (ScheduleKind.CRON, ScheduleKind.CONDITION):
        cron = _parse_cron(expr)
        schedule = Schedule(skind, expr, zone, _cron=cron)
        if schedule.next_after(created, budget=budget) is None:
            raise _bad(
                f"cron {expr.strip()!r} never fires in {zone.key}: every time it names falls "
                "in a daylight-saving gap; pick a time outside the gap"
            )
        return schedule
    if skind is ScheduleKind.RRULE:
        try:
            spec = _parse_rrule(expr, zone, created, budget)
        except _OutOfBudget:
            raise _bad(
                f"rrule never fires within the search budget ({budget.limit} candidate times "
                "looked at): this rule produces no occurrence within the search budget; check "
                "its BY parts against each other and against INTERVAL, or use a coarser FREQ"
            ) from None
        return Schedule(skind, expr, zone, _rrule=spec)
    if skind is ScheduleKind.ONCE:
        return Schedule(skind, expr, zone, _once=_parse_once(expr, zone))
    _check_event_pattern(expr)
    return Schedule(skind, expr, zone)


def event_matches(pattern: str, event_type: str) -> bool:
    """Whether an event-kind schedule's pattern selects this event type."""
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern


# --------------------------------------------------------------------------- shared time math


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("schedule math needs timezone-aware datetimes")
    return moment.astimezone(UTC)


def _later(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return datetime.max


def _instants(wall: datetime, zone: ZoneInfo, fixed: bool) -> tuple[datetime, ...]:
    """The UTC instants a naive local wall time fires at (see the module docstring)."""
    first = wall.replace(tzinfo=zone).astimezone(UTC)
    if fixed:
        return (first,)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return (first, second)  # repeated by fall-back
    return ()  # skipped by spring-forward


def _merge(
    walls_from: Callable[[datetime, Budget], Iterable[datetime]],
    zone: ZoneInfo,
    fixed: bool,
    after: datetime,
    until: datetime | None,
    budget: Budget,
) -> Iterator[datetime]:
    """Fire instants after `after`, strictly ascending, from ascending wall times.

    Around DST changes, instants are not in wall-time order (a shifted 02:30
    lands after 03:10; an overlap's second pass comes after its first), but a
    wall time w always maps into [w - max_offset, w - min_offset]. So walls are
    read from the earliest that can reach past `after`, and an instant is only
    released once later walls can no longer produce anything earlier. Walls more
    than `HORIZON_YEARS` past `after` are not read.
    """
    low, high = offset_bounds(str(zone.key))
    try:
        start = (after + low).replace(tzinfo=None)
    except OverflowError:
        return
    pending: list[datetime] = []
    last: datetime | None = None
    give_up = _later(start, _HORIZON)
    for wall in walls_from(start, budget):
        if wall > give_up:
            budget.horizon_reached = True
            break
        for instant in _instants(wall, zone, fixed):
            if instant > after:
                heapq.heappush(pending, instant)
        settled = (wall - high).replace(tzinfo=UTC)
        while pending and pending[0] <= settled:
            instant = heapq.heappop(pending)
            if until is not None and instant > until:
                return
            if instant != last:
                last = instant
                yield instant
        if until is not None and settled > until:
            break  # every later wall fires after UNTIL: the rule has ended
    else:
        budget.horizon_reached = True  # out of walls: the calendar (or cron's horizon) ended
    while pending:
        instant = heapq.heappop(pending)
        if until is not None and instant > until:
            return
        if instant != last:
            last = instant
            yield instant


# --------------------------------------------------------------------------- cron

_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_LIMITS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}
_ITEM = re.compile(r"(\*|[0-9A-Z]+(?:-[0-9A-Z]+)?)(?:/([0-9]+))?")
_NTH = re.compile(r"([0-7]|[A-Z]{3})(?:#([1-5])|L)")
_MACROS = {
    "@YEARLY": "0 0 1 1 *",
    "@ANNUALLY": "0 0 1 1 *",
    "@MONTHLY": "0 0 1 * *",
    "@WEEKLY": "0 0 * * 0",
    "@DAILY": "0 0 * * *",
    "@MIDNIGHT": "0 0 * * *",
    "@HOURLY": "0 * * * *",
}


@dataclass(frozen=True)
class _Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    times: tuple[tuple[int, int], ...]  # (hour, minute), ascending
    doms: frozenset[int]
    last_dom: bool
    months: frozenset[int]
    dows: frozenset[int]  # 0 = Sunday
    nth_dows: frozenset[tuple[int, int]]  # (weekday, n); n = -1 is the last one
    either_day: bool  # Vixie OR of day-of-month and day-of-week
    fixed: bool
    _days: dict[tuple[int, bool, int], tuple[int, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def days(self, year: int, month: int) -> tuple[int, ...]:
        """Matching days of a month; cached by the month's shape, of which there are 168."""
        first = date(year, month, 1).weekday()
        key = (month, month == 2 and calendar.isleap(year), first)
        found = self._days.get(key)
        if found is None:
            length = calendar.monthrange(year, month)[1]
            found = tuple(d for d in range(1, length + 1) if self._day_ok(d, length, first))
            self._days[key] = found
        return found

    def _day_ok(self, day: int, length: int, first_weekday: int) -> bool:
        weekday = (first_weekday + day) % 7  # Monday=0 shifted so that Sunday=0
        dom = day in self.doms or (self.last_dom and day == length)
        dow = weekday in self.dows or any(
            wd == weekday and (day + 7 > length if n < 0 else (day - 1) // 7 + 1 == n)
            for wd, n in self.nth_dows
        )
        return (dom or dow) if self.either_day else (dom and dow)

    def walls(self, start: datetime, budget: Budget) -> Iterator[datetime]:
        """Matching naive wall times at or after `start`, ascending, within the horizon;
        each month looked at and each wall yielded is charged to `budget`."""
        if start.second or start.microsecond:
            start = start.replace(second=0, microsecond=0) + _MINUTE
        year, month = start.year, start.month
        first_day = (start.year, start.month, start.day)
        first_time = (start.hour, start.minute)
        end = min(start.year + HORIZON_YEARS + 1, _LAST_YEAR)
        while year <= end:
            budget.spend()
            if month in self.months:
                for day in self.days(year, month):
                    if (year, month, day) < first_day:
                        continue
                    times = self.times
                    if (year, month, day) == first_day:
                        times = times[bisect.bisect_left(times, first_time) :]
                    for hour, minute in times:
                        budget.spend()
                        yield datetime(year, month, day, hour, minute)
            month += 1
            if month == 13:
                year, month = year + 1, 1

    def ever_matches_a_day(self) -> bool:
        # 2000-2027 holds every (leap, weekday of 1 January) combination, so every month shape.
        return any(
            self.days(year, month) for year in range(2000, 2028) for month in sorted(self.months)
        )


def _parse_cron(expr: str) -> _Cron:
    text = expr.strip()
    if text.startswith("@"):
        macro = text.split()[0].upper()
        if macro in _MACROS:
            raise _bad(f"{text.split()[0]} is not supported; write it as {_MACROS[macro]!r}")
        raise _bad(
            f"{text.split()[0]} is not supported; write five cron fields such as '0 0 * * *'"
        )
    fields = text.split()
    if len(fields) != 5:
        extra = " (no seconds or year field)" if len(fields) in (6, 7) else ""
        raise _bad(
            "cron needs exactly five fields (minute hour day-of-month month day-of-week)"
            f"{extra}; got {len(fields)}"
        )
    minutes, _ = _cron_field(fields[0], 0)
    hours, _ = _cron_field(fields[1], 1)
    doms, last_dom = _cron_field(fields[2], 2)
    months, _ = _cron_field(fields[3], 3)
    dows, nth = _cron_field(fields[4], 4)
    nth_dows = frozenset(cast(set[tuple[int, int]], nth))
    fixed = not any(c in fields[0] + fields[1] for c in "*/")
    cron = _Cron(
        minutes=frozenset(minutes),
        hours=frozenset(hours),
        times=tuple(sorted((h, m) for h in hours for m in minutes)),
        doms=frozenset(doms),
        last_dom=bool(last_dom),
        months=frozenset(months),
        dows=frozenset(d % 7 for d in dows),
        nth_dows=nth_dows,
        either_day=not (fields[2].startswith("*") or fields[4].startswith("*")),
        fixed=fixed,
    )
    if not cron.ever_matches_a_day():
        raise _bad(
            f"cron {text!r} never fires: no date matches its day-of-month and month "
            "(e.g. February 30); check those two fields"
        )
    return cron


def _cron_field(text: str, index: int) -> tuple[set[int], set[tuple[int, int]] | bool]:
    """Values of one field, plus its extension: L (day-of-month) or D#N / DL (day-of-week)."""
    name = _FIELD_NAMES[index]
    low, high = _LIMITS[index]
    values: set[int] = set()
    nth: set[tuple[int, int]] = set()
    last = False
    for raw in text.upper().split(","):
        if not raw:
            raise _bad(f"cron {name} field {text!r} has an empty list item; remove the extra comma")
        if index == 2 and raw == "L":
            last = True
            continue
        if index == 4 and (special := _NTH.fullmatch(raw)):
            weekday = _cron_value(special.group(1), index, text) % 7
            nth.add((weekday, int(special.group(2)) if special.group(2) else -1))
            continue
        item = _ITEM.fullmatch(raw)
        if item is None:
            raise _bad(
                f"cron {name} field {text!r} is not understood; use numbers {low}-{high}, "
                "*, ranges like 1-5, lists like 1,15 and steps like */10"
            )
        span, step_text = item.groups()
        if span == "*":
            first, final = low, high
        elif "-" in span:
            left, right = span.split("-")
            first, final = _cron_value(left, index, text), _cron_value(right, index, text)
            if first > final:
                raise _bad(
                    f"cron {name} range {left}-{right} runs backwards; "
                    f"split it, e.g. {left}-{high},{low}-{right}"
                )
        else:
            first = _cron_value(span, index, text)
            final = high if step_text else first
        step = int(step_text) if step_text else 1
        if step < 1 or step > high - low + 1:
            raise _bad(f"cron {name} step /{step_text} must be between 1 and {high - low + 1}")
        values.update(range(first, final + 1, step))
    if index == 2:
        return values, last
    return values, nth


def _cron_value(token: str, index: int, text: str) -> int:
    name = _FIELD_NAMES[index]
    low, high = _LIMITS[index]
    names = _MONTH_NAMES if index == 3 else _DAY_NAMES if index == 4 else {}
    if token in names:
        return names[token]
    if not token.isdigit():
        hint = " or names JAN-DEC" if index == 3 else " or names SUN-SAT" if index == 4 else ""
        raise _bad(f"cron {name} field {text!r}: {token!r} is not a number {low}-{high}{hint}")
    value = int(token)
    if not low <= value <= high:
        raise _bad(f"cron {name} value {value} is out of range; use {low}-{high}")
    return value


# --------------------------------------------------------------------------- rrule

_FREQS = {
    "YEARLY": YEARLY,
    "MONTHLY": MONTHLY,
    "WEEKLY": WEEKLY,
    "DAILY": DAILY,
    "HOURLY": HOURLY,
    "MINUTELY": MINUTELY,
}
_RULE_PARTS = frozenset(
    (
        "FREQ",
        "INTERVAL",
        "COUNT",
        "UNTIL",
        "BYSECOND",
        "BYMINUTE",
        "BYHOUR",
        "BYDAY",
        "BYMONTHDAY",
        "BYYEARDAY",
        "BYWEEKNO",
        "BYMONTH",
        "BYSETPOS",
        "WKST",
    )
)
_STAMP = re.compile(r"(\d{8})(?:T(\d{6})(Z?))?")
_SUB_MINUTE = "fires more often than once a minute; use FREQ=MINUTELY or slower with one BYSECOND"


@dataclass(frozen=True)
class _RRule:
    rule: rrule  # built with `dtstart` and without UNTIL (applied in UTC by us)
    dtstart: datetime  # naive wall time in the task zone
    freq: int
    interval: int
    wkst: int
    defaults: dict[str, Any]  # the parts dateutil would derive from DTSTART, made explicit
    until: datetime | None  # aware UTC, inclusive
    instants: tuple[datetime, ...] | None  # every fire time, for rules with COUNT

    def walls(self, start: datetime, budget: Budget) -> Iterator[datetime]:
        """Occurrences (naive wall times) at or after `start`, charged to `budget` (those
        read before `start` too).

        dateutil always iterates from DTSTART, which is slow for old minutely
        rules, so the rule is restarted at the latest period boundary before
        `start` that keeps the INTERVAL phase; with the DTSTART-derived parts
        made explicit, the occurrences in later periods are unchanged.
        """
        anchor = self._anchor(start) if start > self.dtstart else self.dtstart
        anchor = max(anchor, self.dtstart)
        rule = self.rule.replace(dtstart=anchor, **self.defaults)
        for wall in _budgeted(rule, budget):
            budget.spend()
            if wall >= start:
                yield wall

    def _anchor(self, start: datetime) -> datetime:
        origin, n = self.dtstart, self.interval
        if self.freq == YEARLY:
            years = (start.year - origin.year) // n * n
            return datetime(origin.year + years, 1, 1)
        if self.freq == MONTHLY:
            first = origin.year * 12 + origin.month - 1
            index = first + ((start.year * 12 + start.month - 1) - first) // n * n
            return datetime(index // 12, index % 12 + 1, 1)
        if self.freq == WEEKLY:
            week0 = origin.date() - timedelta(days=(origin.weekday() - self.wkst) % 7)
            week = start.date() - timedelta(days=(start.weekday() - self.wkst) % 7)
            weeks = (week - week0).days // 7 // n * n
            return datetime.combine(week0 + timedelta(weeks=weeks), datetime.min.time())
        if self.freq == DAILY:
            days = (start.date() - origin.date()).days // n * n
            return datetime.combine(origin.date() + timedelta(days=days), datetime.min.time())
        unit = timedelta(hours=1) if self.freq == HOURLY else _MINUTE
        base = (
            origin.replace(second=0)
            if self.freq == MINUTELY
            else origin.replace(minute=0, second=0)
        )
        return base + (start - base) // unit // n * n * unit


class _Counted(tuple[Any, ...]):
    """One of dateutil's per-rule value sets, charging `budget` as dateutil uses it.

    dateutil loops without yielding while a rule matches nothing (it would run to
    year 9999 on FEB 30), so counting the work it does inside is the only way to
    bound it: a membership test (BYMONTH, BYDAY: once per candidate day) costs one;
    a walk over the set (the times of day tried on a day that matched, the BYSETPOS
    values tried on each period's days) costs its length times `weight`.
    """

    budget: Budget
    weight: int

    def __contains__(self, item: object) -> bool:
        self.budget.spend()
        return tuple.__contains__(self, item)

    def __iter__(self) -> Iterator[Any]:
        self.budget.spend(len(self) * self.weight)
        return tuple.__iter__(self)


def _counted(values: Iterable[Any], budget: Budget, weight: int = 1) -> _Counted:
    counted = _Counted(values)
    counted.budget = budget
    counted.weight = weight
    return counted


# Days in one period of each FREQ: what dateutil scans once per BYSETPOS value.
_PERIOD_DAYS = {YEARLY: 366, MONTHLY: 31, WEEKLY: 7}


def _budgeted(rule: rrule, budget: Budget) -> Iterator[datetime]:
    """Iterate `rule`, raising _OutOfBudget once its work overspends `budget`."""
    # Every candidate day is checked against BYMONTH first (when set), then
    # BYDAY; an unset BYDAY is equivalent to all seven days.
    weekdays = getattr(rule, "_byweekday", None)
    setattr(rule, "_byweekday", _counted(weekdays or range(7), budget))  # noqa: B010
    months = getattr(rule, "_bymonth", None)
    if months:
        setattr(rule, "_bymonth", _counted(months, budget))  # noqa: B010
    times = getattr(rule, "_timeset", None)
    if times:
        setattr(rule, "_timeset", _counted(times, budget))  # noqa: B010
    positions = getattr(rule, "_bysetpos", None)
    if positions:
        weight = _PERIOD_DAYS.get(getattr(rule, "_freq", DAILY), 1)
        setattr(rule, "_bysetpos", _counted(positions, budget, weight))  # noqa: B010
    yield from rule


def _parse_rrule(expr: str, zone: ZoneInfo, created_at: datetime, budget: Budget) -> _RRule:
    dtstart_line: str | None = None
    rule_line: str | None = None
    for line in (part.strip() for part in expr.replace("\r", "\n").split("\n")):
        upper = line.upper()
        if not line:
            continue
        if upper.startswith("DTSTART"):
            if dtstart_line is not None:
                raise _bad("rrule has more than one DTSTART line; keep one")
            dtstart_line = line
            continue
        if upper.startswith("RRULE:"):
            line = line[6:]
        elif ":" in line:
            prop = re.split("[;:]", line, maxsplit=1)[0]
            raise _bad(
                f"rrule property {prop[:40]!r} is not supported; give one RRULE, optionally "
                "after a DTSTART line (RDATE, EXDATE and EXRULE are not supported)"
            )
        if rule_line is not None:
            raise _bad("rrule has more than one RRULE; create one task per rule")
        rule_line = line
    if rule_line is None:
        raise _bad("rrule has no RRULE line; add one such as FREQ=DAILY;BYHOUR=9;BYMINUTE=0")
    if dtstart_line is None:
        dtstart = created_at.astimezone(zone).replace(second=0, microsecond=0, tzinfo=None)
    else:
        dtstart = _parse_dtstart(dtstart_line, zone)

    parts: dict[str, str] = {}
    for chunk in rule_line.strip().strip(";").split(";"):
        key, sep, value = chunk.partition("=")
        key, value = key.strip().upper(), value.strip().upper()
        if not sep or not value:
            raise _bad(f"rrule part {chunk[:40]!r} is not KEY=VALUE; e.g. FREQ=DAILY")
        if key not in _RULE_PARTS:
            raise _bad(
                f"rrule part {key[:40]!r} is not supported; use FREQ, INTERVAL, COUNT, UNTIL, "
                "BYMONTH, BYWEEKNO, BYYEARDAY, BYMONTHDAY, BYDAY, BYHOUR, BYMINUTE, BYSECOND, "
                "BYSETPOS or WKST"
            )
        if key in parts:
            raise _bad(f"rrule part {key} appears twice; keep one")
        parts[key] = value
    freq_name = parts.get("FREQ")
    if freq_name is None:
        raise _bad("rrule needs FREQ, e.g. FREQ=DAILY;BYHOUR=9;BYMINUTE=0")
    if freq_name == "SECONDLY":
        raise _bad(f"FREQ=SECONDLY {_SUB_MINUTE}")
    if freq_name not in _FREQS:
        raise _bad(
            f"FREQ={freq_name[:20]} is unknown; use MINUTELY, HOURLY, DAILY, WEEKLY, "
            "MONTHLY or YEARLY"
        )
    freq = _FREQS[freq_name]
    if "BYSECOND" in parts and len(set(parts["BYSECOND"].split(","))) > 1:
        raise _bad(f"rrule with several BYSECOND values {_SUB_MINUTE}")
    if "BYWEEKNO" in parts and freq != YEARLY:
        raise _bad("BYWEEKNO only works with FREQ=YEARLY; change FREQ or drop BYWEEKNO")
    if "COUNT" in parts and "UNTIL" in parts:
        raise _bad("rrule may have COUNT or UNTIL, not both; drop one")
    if "COUNT" in parts and not (
        parts["COUNT"].isdigit() and 1 <= int(parts["COUNT"]) <= MAX_COUNT
    ):
        raise _bad(f"COUNT must be a whole number from 1 to {MAX_COUNT}; use UNTIL for longer runs")
    if "INTERVAL" in parts and not (
        parts["INTERVAL"].isdigit() and 1 <= int(parts["INTERVAL"]) <= MAX_INTERVAL
    ):
        # dateutil steps forever on INTERVAL=0 (and backwards on a negative one).
        raise _bad(f"INTERVAL must be a whole number from 1 to {MAX_INTERVAL}")
    until = _parse_until(parts.pop("UNTIL"), zone) if "UNTIL" in parts else None

    text = ";".join(f"{key}={value}" for key, value in parts.items())
    try:
        rule = rrulestr(text, dtstart=dtstart)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise _bad(f"rrule {text[:200]!r} is invalid ({exc}); see RFC 5545 section 3.3.10") from exc
    if not isinstance(rule, rrule):
        raise _bad("rrule must be a single RRULE; create one task per rule")
    spec = _RRule(
        rule=rule,
        dtstart=dtstart,
        freq=freq,
        interval=int(parts.get("INTERVAL", "1")),
        wkst=getattr(rule, "_wkst", 0),
        defaults=_implicit_parts(parts, freq, dtstart),
        until=until,
        instants=None,
    )
    if "COUNT" in parts:
        spec = _materialize(spec, zone, budget)
        if not spec.instants:
            raise _bad(f"rrule {text[:200]!r} never fires; check its BY parts against each other")
        return spec
    before = dtstart.replace(tzinfo=zone).astimezone(UTC) - timedelta(days=2)
    first = next(_merge(spec.walls, zone, True, before, None, budget), None)
    if first is None:
        raise _bad(
            f"rrule {text[:200]!r} never fires (no occurrence in the {HORIZON_YEARS} years "
            "after DTSTART); "
            "check its BY parts against each other and against INTERVAL"
        )
    if until is not None and first > until:
        raise _bad("rrule never fires: UNTIL is before the first occurrence; move UNTIL later")
    return spec


def _materialize(spec: _RRule, zone: ZoneInfo, budget: Budget) -> _RRule:
    """All fire times of a COUNT rule: dateutil's COUNT needs iteration from DTSTART anyway."""
    rule = spec.rule.replace(**spec.defaults)
    instants = sorted({_instants(wall, zone, True)[0] for wall in _budgeted(rule, budget)})
    return dataclasses.replace(spec, instants=tuple(instants))


def _implicit_parts(parts: dict[str, str], freq: int, dtstart: datetime) -> dict[str, Any]:
    """What dateutil (and RFC 5545) take from DTSTART when the rule leaves it out."""
    implicit: dict[str, Any] = {}
    if freq in (YEARLY, MONTHLY, WEEKLY, DAILY) and "BYHOUR" not in parts:
        implicit["byhour"] = dtstart.hour
    if freq != MINUTELY and "BYMINUTE" not in parts:
        implicit["byminute"] = dtstart.minute
    if "BYSECOND" not in parts:
        implicit["bysecond"] = dtstart.second
    if not any(key in parts for key in ("BYWEEKNO", "BYYEARDAY", "BYMONTHDAY", "BYDAY")):
        if freq == YEARLY:
            if "BYMONTH" not in parts:
                implicit["bymonth"] = dtstart.month
            implicit["bymonthday"] = dtstart.day
        elif freq == MONTHLY:
            implicit["bymonthday"] = dtstart.day
        elif freq == WEEKLY:
            implicit["byweekday"] = dtstart.weekday()
    return implicit


def _parse_stamp(value: str, what: str) -> tuple[datetime, bool, bool]:
    """(naive datetime, is_date, is_utc) from an RFC 5545 DATE or DATE-TIME value."""
    match = _STAMP.fullmatch(value.strip().upper())
    if match is None:
        raise _bad(f"{what} {value[:40]!r} is not a date like 20260101 or 20260101T083000[Z]")
    day, clock, zulu = match.groups()
    try:
        stamp = datetime.strptime(day + (clock or "000000"), "%Y%m%d%H%M%S")
    except ValueError as exc:
        raise _bad(f"{what} {value[:40]!r} is not a real date and time; fix it") from exc
    return stamp, clock is None, bool(zulu)


def _parse_dtstart(line: str, zone: ZoneInfo) -> datetime:
    head, sep, value = line.partition(":")
    if not sep:
        raise _bad("DTSTART needs a value, e.g. DTSTART:20260101T083000")
    source: ZoneInfo | None = None
    for param in head.split(";")[1:]:
        key, _, pvalue = param.partition("=")
        if key.strip().upper() == "TZID":
            try:
                source = get_zone(pvalue.strip())
            except InvalidInput as exc:
                raise _bad(
                    f"DTSTART TZID {pvalue.strip()[:60]!r} is unknown; use an IANA name such as "
                    "Europe/Chisinau"
                ) from exc
        elif key.strip().upper() != "VALUE":
            raise _bad(f"DTSTART parameter {key[:40]!r} is not supported; use TZID or nothing")
    stamp, _, utc = _parse_stamp(value, "DTSTART")
    if utc and source is not None:
        raise _bad("DTSTART has both TZID and a trailing Z; keep one")
    if utc:
        stamp = stamp.replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None)
    elif source is not None:
        stamp = stamp.replace(tzinfo=source).astimezone(zone).replace(tzinfo=None)
    return stamp


def _parse_until(value: str, zone: ZoneInfo) -> datetime:
    stamp, is_date, utc = _parse_stamp(value, "UNTIL")
    if utc:
        return stamp.replace(tzinfo=UTC)
    if is_date:
        stamp += timedelta(days=1, microseconds=-1)
    return stamp.replace(tzinfo=zone).astimezone(UTC)


# --------------------------------------------------------------------------- once and event


def _parse_once(expr: str, zone: ZoneInfo) -> datetime:
    text = expr.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _bad(
            f"{expr.strip()[:60]!r} is not an ISO 8601 date-time; write e.g. 2026-05-01T09:00:00 "
            "or 2026-05-01T09:00:00+03:00"
        ) from exc
    if len(text) <= 10:
        raise _bad(f"{expr.strip()!r} has no time of day; add one, e.g. {text}T09:00")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


_EVENT = re.compile(r"[A-Za-z0-9._:/-]*\*?")


def _check_event_pattern(expr: str) -> None:
    if len(expr) > MAX_EVENT_LEN:
        raise _bad(f"event pattern is {len(expr)} characters long; shorten it to {MAX_EVENT_LEN}")
    if not expr or _EVENT.fullmatch(expr) is None:
        raise _bad(
            f"event pattern {expr[:60]!r} is invalid; use letters, digits and ._:-/ "
            "(e.g. github.push), optionally ending in * as a prefix match (e.g. github.*)"
        )
