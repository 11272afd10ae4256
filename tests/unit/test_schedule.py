"""Schedule math: syntax, DST behaviour, bounded validation and ordering."""

from __future__ import annotations

import contextlib
import itertools
from datetime import datetime, timedelta

import pytest
from dateutil.rrule import rrulestr
from hypothesis import given, settings
from hypothesis import strategies as st

from pao.domain.tasks import hourly_peak
from pao.errors import InvalidInput
from pao.schedule import KINDS, SEARCH_BUDGET, Budget, Schedule, event_matches, parse_schedule
from pao.zones import UTC, get_zone, offset_bounds

NY = "America/New_York"
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def z(text: str) -> datetime:
    """A UTC instant from '2026-03-08T07:30'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sched(kind: str, expr: str, zone: str = NY, created: datetime = CREATED) -> Schedule:
    return parse_schedule(kind, expr, zone, created_at=created)


def fires(expr: str, after: str, count: int, zone: str = NY, kind: str = "cron") -> list[str]:
    got = sched(kind, expr, zone).upcoming(z(after), count)
    return [t.strftime("%Y-%m-%dT%H:%M") for t in got]


def rejected(kind: str, expr: str, zone: str = NY) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        sched(kind, expr, zone)
    return info.value


def message(kind: str, expr: str, zone: str = NY) -> str:
    error = rejected(kind, expr, zone)
    assert len(error.errors) == 1
    return error.errors[0].message


# --------------------------------------------------------------------------- zones


def test_zone_loads_from_tzdata_and_is_cached() -> None:
    zone = get_zone("Europe/Chisinau")
    assert zone is get_zone("Europe/Chisinau")
    assert zone.key == "Europe/Chisinau"
    assert datetime(2026, 7, 1, tzinfo=zone).utcoffset() == timedelta(hours=3)
    assert get_zone("UTC").utcoffset(None) == timedelta(0)


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "../../etc/passwd", "/etc/passwd", "", "america/new_york", "zones"]
)
def test_unknown_zone_rejected(name: str) -> None:
    error = rejected("cron", "0 9 * * *", zone=name)
    assert error.errors[0].loc == ("timezone",)
    assert "IANA name such as Europe/Chisinau" in error.errors[0].message


def test_offset_bounds() -> None:
    assert offset_bounds(NY) == (timedelta(hours=-5), timedelta(hours=-4))
    assert offset_bounds("UTC") == (timedelta(0), timedelta(0))
    low, high = offset_bounds("Australia/Lord_Howe")
    assert low <= timedelta(hours=10, minutes=30) < timedelta(hours=11) <= high


# --------------------------------------------------------------------------- cron and DST


def test_fixed_time_in_spring_gap_is_shifted() -> None:
    assert fires("30 2 * * *", "2026-03-07T00:00", 3) == [
        "2026-03-07T07:30",
        "2026-03-08T07:30",  # 03:30 EDT
        "2026-03-09T06:30",
    ]


def test_fixed_time_in_fall_overlap_fires_once_at_first() -> None:
    assert fires("30 2 * * *", "2026-10-31T12:00", 2) == ["2026-11-01T07:30", "2026-11-02T07:30"]
    assert fires("30 1 * * *", "2026-10-31T12:00", 2) == ["2026-11-01T05:30", "2026-11-02T06:30"]


def test_hourly_wildcard_fires_twice_in_overlap() -> None:
    assert fires("0 * * * *", "2026-11-01T03:30", 4) == [
        "2026-11-01T04:00",
        "2026-11-01T05:00",  # 01:00 EDT
        "2026-11-01T06:00",  # 01:00 EST
        "2026-11-01T07:00",
    ]


def test_hourly_wildcard_skips_gap() -> None:
    assert fires("0 * * * *", "2026-03-08T05:30", 3) == [
        "2026-03-08T06:00",  # 01:00 EST
        "2026-03-08T07:00",  # 03:00 EDT; 02:00 does not exist
        "2026-03-08T08:00",
    ]


def test_wildcard_minutes_in_gap_hour_never_fire_that_day() -> None:
    got = fires("* 2 * * *", "2026-03-07T12:00", 2)
    assert got == ["2026-03-09T06:00", "2026-03-09T06:01"]
    overlap = fires("0/30 1 * * *", "2026-11-01T00:00", 5)
    assert overlap == [
        "2026-11-01T05:00",
        "2026-11-01T05:30",
        "2026-11-01T06:00",
        "2026-11-01T06:30",
        "2026-11-02T06:00",
    ]


def test_stepped_hour_is_wildcard() -> None:
    # 00:00 EDT, then 02:00 EST (01:00 is not named, so nothing repeats).
    assert fires("0 */2 * * *", "2026-11-01T03:30", 3) == [
        "2026-11-01T04:00",
        "2026-11-01T07:00",
        "2026-11-01T09:00",
    ]
    assert fires("0 */2 * * *", "2026-03-08T04:30", 2) == ["2026-03-08T05:00", "2026-03-08T08:00"]


def test_quarter_hours_across_fall_back() -> None:
    got = sched("cron", "*/15 * * * *").upcoming(z("2026-11-01T04:59"), 12)
    window = [t for t in got if z("2026-11-01T05:00") <= t <= z("2026-11-01T06:45")]
    assert len(window) == 8
    assert window == [z("2026-11-01T05:00") + timedelta(minutes=15 * i) for i in range(8)]


def test_shifted_times_are_merged_and_deduplicated() -> None:
    # 02:30 shifts to 03:30 EDT and collides with the real 03:30.
    assert fires("30 2,3 * * *", "2026-03-08T00:00", 3) == [
        "2026-03-08T07:30",
        "2026-03-09T06:30",
        "2026-03-09T07:30",
    ]
    # Shifted 02:10/02:30 land after the real 03:10: order must still ascend.
    assert fires("10,30 2,3 * * *", "2026-03-08T05:00", 3) == [
        "2026-03-08T07:10",
        "2026-03-08T07:30",
        "2026-03-09T06:10",
    ]


def test_lord_howe_half_hour_shift() -> None:
    # Lord Howe springs forward 02:00 -> 02:30 (+10:30 -> +11) on Sunday 2026-10-04.
    zone = "Australia/Lord_Howe"
    assert fires("15 2 * * *", "2026-10-02T00:00", 3, zone=zone) == [
        "2026-10-02T15:45",
        "2026-10-03T15:45",  # 02:15 does not exist: fires at 02:45 +11
        "2026-10-04T15:15",
    ]
    assert fires("*/15 2 * * *", "2026-10-03T00:00", 3, zone=zone) == [
        "2026-10-03T15:30",  # 02:30 +11; 02:00 and 02:15 do not exist
        "2026-10-03T15:45",
        "2026-10-04T15:00",
    ]


def test_leap_day() -> None:
    got = sched("cron", "0 0 29 2 *").next_after(z("2026-03-01T00:00"))
    assert got is not None
    assert got.astimezone(get_zone(NY)).replace(tzinfo=None) == datetime(2028, 2, 29)


def test_thirty_first_skips_short_months() -> None:
    got = sched("cron", "0 9 31 * *").upcoming(z("2026-01-01T00:00"), 7)
    assert [t.astimezone(get_zone(NY)).month for t in got] == [1, 3, 5, 7, 8, 10, 12]


def test_vixie_or_of_day_fields() -> None:
    got = sched("cron", "0 0 13 * 5", "UTC").upcoming(z("2026-02-01T00:00"), 6)
    days = [(t.month, t.day, t.strftime("%a")) for t in got]
    assert days == [
        (2, 6, "Fri"),
        (2, 13, "Fri"),
        (2, 20, "Fri"),
        (2, 27, "Fri"),
        (3, 6, "Fri"),
        (3, 13, "Fri"),
    ]
    got = sched("cron", "0 0 13 * 1", "UTC").upcoming(z("2026-04-01T00:00"), 3)
    assert [t.day for t in got] == [6, 13, 20]


def test_star_prefixed_day_field_means_and() -> None:
    # Vixie: "*/2" counts as unrestricted, so both fields must match (odd-day Mondays).
    got = sched("cron", "0 0 */2 * 1", "UTC").upcoming(z("2026-05-31T00:00"), 3)
    assert [(t.month, t.day) for t in got] == [(6, 1), (6, 15), (6, 29)]


@pytest.mark.parametrize("dow", ["0", "7", "SUN", "sun"])
def test_sunday_spellings(dow: str) -> None:
    got = sched("cron", f"0 12 * * {dow}", "UTC").upcoming(z("2026-03-01T13:00"), 2)
    assert [t.strftime("%a %d") for t in got] == ["Sun 08", "Sun 15"]


def test_names_ranges_lists_steps() -> None:
    got = sched("cron", "0 9 * JAN-MAR MON-FRI", "UTC").upcoming(z("2026-03-27T12:00"), 2)
    assert got == [z("2026-03-30T09:00"), z("2026-03-31T09:00")]
    got = sched("cron", "5-59/20 1,3 * * *", "UTC").upcoming(z("2026-01-01T00:00"), 4)
    assert [t.strftime("%H:%M") for t in got] == ["01:05", "01:25", "01:45", "03:05"]
    assert sched("cron", "5-7 * * * 5-7", "UTC").upcoming(z("2026-03-06T00:00"), 1) == [
        z("2026-03-06T00:05")
    ]


def test_last_day_and_nth_weekday_extensions() -> None:
    got = sched("cron", "0 0 L * *", "UTC").upcoming(z("2026-01-15T00:00"), 3)
    assert [(t.month, t.day) for t in got] == [(1, 31), (2, 28), (3, 31)]
    got = sched("cron", "0 0 * * 5L", "UTC").upcoming(z("2026-01-01T00:00"), 2)
    assert [(t.month, t.day) for t in got] == [(1, 30), (2, 27)]
    got = sched("cron", "0 0 * * MON#2", "UTC").upcoming(z("2026-01-01T00:00"), 2)
    assert [(t.month, t.day) for t in got] == [(1, 12), (2, 9)]


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("0 0 0 * * *", "exactly five fields"),
        ("* * * *", "got 4"),
        ("@daily", "'0 0 * * *'"),
        ("@reboot", "not supported"),
        ("60 * * * *", "out of range"),
        ("* 24 * * *", "out of range"),
        ("* * 0 * *", "out of range"),
        ("* * * 13 *", "out of range"),
        ("* * * * 8", "out of range"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "step"),
        ("1,,2 * * * *", "empty list item"),
        ("? * * * *", "not understood"),
        ("H * * * *", "not a number"),
        ("* * 15W * *", "not a number"),
        ("* * * FOO *", "not a number"),
        ("* * * * 5#6", "not understood"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_bad_cron(expr: str, fragment: str) -> None:
    error = rejected("cron", expr)
    assert error.errors[0].loc == ("schedule_expr",)
    assert fragment in error.errors[0].message


def test_six_field_message() -> None:
    assert message("cron", "0 0 0 * * *") == (
        "cron needs exactly five fields (minute hour day-of-month month day-of-week)"
        " (no seconds or year field); got 6"
    )


def test_cron_only_in_dst_gap_never_fires() -> None:
    assert "daylight-saving gap" in message("cron", "*/5 2 * 3 0#2")
    # The same fixed time is shifted, so it does fire.
    assert sched("cron", "30 2 * 3 0#2").next_after(CREATED) == z("2026-03-08T07:30")


def test_cron_validation_is_fast() -> None:
    for expr in ["0 0 30 2 *", "*/5 2 * 3 0#2", "0 0 * 2 5#5", "* * * * *", "0 0 29 2 1"]:
        budget = Budget()
        with contextlib.suppress(InvalidInput):
            parse_schedule("cron", expr, NY, created_at=CREATED, budget=budget)
        assert budget.spent < 5_000, (expr, budget.spent)  # of 50,000: counted, not timed


def test_rare_cron_still_found() -> None:
    assert sched("cron", "0 0 * 2 5#5", "UTC").next_after(CREATED) == z("2036-02-29T00:00")


def test_condition_fires_like_cron() -> None:
    assert sched("condition", "*/10 * * * *", "UTC").upcoming(z("2026-01-01T00:01"), 2) == [
        z("2026-01-01T00:10"),
        z("2026-01-01T00:20"),
    ]
    assert "never fires" in message("condition", "0 0 30 2 *")


# --------------------------------------------------------------------------- rrule


def test_rrule_both_dst_transitions() -> None:
    rule = "FREQ=DAILY;BYHOUR=2;BYMINUTE=30"
    assert fires(rule, "2026-03-07T00:00", 3, kind="rrule") == [
        "2026-03-07T07:30",
        "2026-03-08T07:30",
        "2026-03-09T06:30",
    ]
    assert fires(rule, "2026-10-31T00:00", 3, kind="rrule") == [
        "2026-10-31T06:30",
        "2026-11-01T07:30",
        "2026-11-02T07:30",
    ]
    assert fires("FREQ=DAILY;BYHOUR=1;BYMINUTE=30", "2026-10-31T12:00", 2, kind="rrule") == [
        "2026-11-01T05:30",
        "2026-11-02T06:30",
    ]


def test_seed_rule_chisinau_summer_and_winter() -> None:
    rule = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30"
    summer = fires(rule, "2026-07-03T12:00", 2, zone="Europe/Chisinau", kind="rrule")
    assert summer == ["2026-07-06T05:30", "2026-07-07T05:30"]  # Mon, Tue
    winter = fires(rule, "2026-12-04T12:00", 2, zone="Europe/Chisinau", kind="rrule")
    assert winter == ["2026-12-07T06:30", "2026-12-08T06:30"]
    prefixed = fires("RRULE:" + rule, "2026-12-04T12:00", 1, zone="Europe/Chisinau", kind="rrule")
    assert prefixed == winter[:1]


def test_missing_dtstart_anchors_to_created_at_minute() -> None:
    created = datetime(2026, 5, 5, 10, 17, 42, 123456, tzinfo=UTC)
    schedule = sched("rrule", "FREQ=HOURLY;INTERVAL=2", "UTC", created)
    assert schedule.upcoming(created - timedelta(hours=1), 3) == [
        z("2026-05-05T10:17"),
        z("2026-05-05T12:17"),
        z("2026-05-05T14:17"),
    ]
    daily = sched("rrule", "FREQ=DAILY", NY, created)  # 06:17 EDT
    assert daily.next_after(created) == z("2026-05-06T10:17")


def test_dtstart_forms() -> None:
    local = sched("rrule", "DTSTART:20260301T090000\nRRULE:FREQ=WEEKLY")
    assert local.next_after(CREATED) == z("2026-03-01T14:00")
    assert local.upcoming(CREATED, 2)[1] == z("2026-03-08T13:00")  # 09:00 EDT
    utc = sched("rrule", "DTSTART:20260301T140000Z\nFREQ=WEEKLY")
    assert utc.upcoming(CREATED, 2) == [z("2026-03-01T14:00"), z("2026-03-08T13:00")]
    berlin = sched("rrule", "DTSTART;TZID=Europe/Berlin:20260301T150000\nFREQ=DAILY;COUNT=2")
    assert berlin.upcoming(CREATED, 5) == [z("2026-03-01T14:00"), z("2026-03-02T14:00")]
    date_only = sched("rrule", "DTSTART;VALUE=DATE:20260301\r\nRRULE:FREQ=DAILY;BYHOUR=7")
    assert date_only.next_after(CREATED) == z("2026-03-01T12:00")


def test_only_times_from_dtstart_on_count() -> None:
    schedule = sched("rrule", "DTSTART:20260310T120000\nFREQ=MONTHLY;BYMONTHDAY=1,15")
    assert schedule.upcoming(CREATED, 2) == [z("2026-03-15T16:00"), z("2026-04-01T16:00")]


def test_last_friday_and_last_weekday() -> None:
    got = sched("rrule", "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=17;BYMINUTE=0", "UTC")
    assert [t.day for t in got.upcoming(CREATED, 4)] == [30, 27, 27, 24]
    weekday = sched("rrule", "FREQ=MONTHLY;BYSETPOS=-1;BYDAY=MO,TU,WE,TH,FR;BYHOUR=9", "UTC")
    # Jan 30 2026 is Fri, Feb 27 Fri, Mar 31 Tue, May 29 Fri (31st is Sunday).
    got_days = [(t.month, t.day) for t in weekday.upcoming(CREATED, 5)]
    assert got_days == [(1, 30), (2, 27), (3, 31), (4, 30), (5, 29)]


def test_until_in_utc_and_local() -> None:
    rule = "DTSTART:20260101T090000\nFREQ=DAILY;UNTIL=20260103T140000Z"
    assert len(sched("rrule", rule).upcoming(CREATED, 10)) == 3
    assert len(sched("rrule", rule.replace("T140000Z", "T085959")).upcoming(CREATED, 10)) == 2
    assert len(sched("rrule", rule.replace("T140000Z", "")).upcoming(CREATED, 10)) == 3


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=SECONDLY",
        "FREQ=MINUTELY;BYSECOND=0,30",
        "FREQ=HOURLY;BYSECOND=1,2,3",
    ],
)
def test_sub_minute_rrules_rejected(rule: str) -> None:
    assert "fires more often than once a minute" in message("rrule", rule)


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=MINUTELY;BYMONTH=4;BYMONTHDAY=31",
        "FREQ=HOURLY;BYMONTH=4;BYMONTHDAY=31",
        "FREQ=WEEKLY;BYMONTH=4;BYMONTHDAY=31",
        "DTSTART:20260105T000000\nFREQ=DAILY;INTERVAL=7;BYDAY=TU",
        "DTSTART:20260101T000000\nFREQ=MONTHLY;INTERVAL=2;BYMONTH=2",
        "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=6",
        "DTSTART:20250101T000000\nFREQ=YEARLY;INTERVAL=4;BYMONTH=2;BYMONTHDAY=29",
        "DTSTART:20300101T000000\nFREQ=DAILY;UNTIL=20200101T000000Z",
        "DTSTART:20300101T000000\nFREQ=DAILY;COUNT=3;BYMONTH=2;BYMONTHDAY=30",
    ],
)
def test_rrules_that_never_fire_are_rejected_quickly(rule: str) -> None:
    assert "never fires" in message("rrule", rule)
    budget = Budget()
    with contextlib.suppress(InvalidInput):
        parse_schedule("rrule", rule, NY, created_at=CREATED, budget=budget)
    # One budget ends the search, overshot by at most the batch it was spending.
    assert budget.spent <= budget.limit + 1_000, budget.spent


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("FREQ=DAILY\nRRULE:FREQ=WEEKLY", "more than one RRULE"),
        ("RRULE:FREQ=DAILY\nEXDATE:20260101T000000", "EXDATE"),
        ("RDATE:20260101T000000\nRRULE:FREQ=DAILY", "not supported"),
        ("DTSTART:20260101T000000", "no RRULE"),
        ("DTSTART:2026\nFREQ=DAILY", "not a date"),
        ("DTSTART;TZID=Nowhere/Land:20260101T000000\nFREQ=DAILY", "TZID"),
        ("BYHOUR=9", "needs FREQ"),
        ("FREQ=FORTNIGHTLY", "unknown"),
        ("FREQ=DAILY;BYEASTER=0", "not supported"),
        ("FREQ=DAILY;COUNT=2;UNTIL=20270101", "not both"),
        ("FREQ=DAILY;COUNT=0", "COUNT"),
        ("FREQ=DAILY;BYHOUR=25", "invalid"),
        ("FREQ=DAILY;BYHOUR", "KEY=VALUE"),
        ("FREQ=DAILY;FREQ=WEEKLY", "twice"),
        ("FREQ=DAILY;BYWEEKNO=3", "BYWEEKNO"),
    ],
)
def test_bad_rrule(rule: str, fragment: str) -> None:
    error = rejected("rrule", rule)
    assert error.errors[0].loc == ("schedule_expr",)
    assert fragment in error.errors[0].message


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=MINUTELY;INTERVAL=7",
        "FREQ=HOURLY;INTERVAL=5;BYMINUTE=10,40",
        "FREQ=DAILY;INTERVAL=3;BYHOUR=6,18",
        "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH;WKST=SU",
        "FREQ=MONTHLY;INTERVAL=5;BYDAY=2WE",
        "FREQ=MONTHLY;BYMONTHDAY=31",
        "FREQ=YEARLY;INTERVAL=3;BYMONTH=2;BYMONTHDAY=-1",
        "FREQ=YEARLY;BYWEEKNO=20;BYDAY=MO",
    ],
)
def test_restarted_rrule_matches_plain_dateutil(rule: str) -> None:
    created = datetime(2021, 3, 17, 13, 29, tzinfo=UTC)
    schedule = sched("rrule", rule, "UTC", created)
    after = z("2026-06-02T11:11")
    expected = rrulestr(rule, dtstart=datetime(2021, 3, 17, 13, 29)).xafter(
        after.replace(tzinfo=None), count=30
    )
    assert schedule.upcoming(after, 30) == [t.replace(tzinfo=UTC) for t in expected]


def test_rrule_next_after_is_cheap_for_old_minutely_rule() -> None:
    # Counted in candidates examined, not in time: walking from 2000 would be 13 million.
    schedule = sched("rrule", "FREQ=MINUTELY", NY, datetime(2000, 1, 1, tzinfo=UTC))
    budget = Budget()
    assert schedule.next_after(z("2026-03-08T06:59:30"), budget=budget) == z("2026-03-08T07:00")
    assert budget.spent < 1_000, budget.spent


def test_yearly_upcoming_is_fast() -> None:
    # A century (the search horizon) of yearly fires, each within one call's budget.
    for kind, expr, most in [("cron", "0 0 1 1 *", 2_000), ("rrule", "FREQ=YEARLY", SEARCH_BUDGET)]:
        budget = Budget()
        got = sched(kind, expr).upcoming(CREATED, 100, budget=budget)
        assert len(got) == 100
        assert budget.spent <= most, (kind, budget.spent)


# --------------------------------------------------------------------------- once, event, misc


def test_once_forms() -> None:
    assert sched("once", "2026-05-01T09:00:00").next_after(CREATED) == z("2026-05-01T13:00")
    assert sched("once", "2026-05-01T09:00:00+03:00").next_after(CREATED) == z("2026-05-01T06:00")
    assert sched("once", "2026-05-01T09:00:00Z").next_after(CREATED) == z("2026-05-01T09:00")
    in_gap = sched("once", "2026-03-08T02:30")
    assert in_gap.upcoming(CREATED, 5) == [z("2026-03-08T07:30")]
    assert in_gap.next_after(z("2026-03-08T07:30")) is None
    overlap = sched("once", "2026-11-01T01:30")
    assert overlap.next_after(CREATED) == z("2026-11-01T05:30")


@pytest.mark.parametrize("expr", ["tomorrow", "2026-13-01T00:00", "2026-05-01", "1700000000"])
def test_bad_once(expr: str) -> None:
    assert rejected("once", expr).errors[0].loc == ("schedule_expr",)


def test_event_patterns() -> None:
    for expr in ["github.push", "github.*", "*", "a:b/c-d_e.f"]:
        assert sched("event", expr).next_after(CREATED) is None
        assert sched("event", expr).upcoming(CREATED, 3) == []
    for expr in ["git hub", "gi*t", "**", "x" * 201, "a\nb", "é"]:
        assert rejected("event", expr).errors[0].loc == ("schedule_expr",)


def test_event_matches() -> None:
    assert event_matches("github.push", "github.push")
    assert not event_matches("github.push", "github.pushed")
    assert event_matches("github.*", "github.push")
    assert event_matches("github.*", "github.")
    assert not event_matches("github.*", "gitlab.push")
    assert event_matches("*", "anything")


def test_kind_and_length_checks() -> None:
    assert KINDS == ("cron", "rrule", "once", "event", "condition")
    error = rejected("weekly", "0 0 * * *")
    assert error.errors[0].loc == ("schedule_kind",)
    assert "cron, rrule" in error.errors[0].message
    assert "shorten" in message("cron", "0 0 * * *" + " " * 1000)
    assert "NUL" in message("cron", "0 0 * * *\x00")
    assert "needs an expression" in message("cron", "   ")


def test_naive_after_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        sched("cron", "0 0 * * *").next_after(datetime(2026, 1, 1))


def test_upcoming_counts_and_non_utc_after() -> None:
    schedule = sched("cron", "*/5 * * * *")
    assert schedule.upcoming(CREATED, 0) == []
    after = datetime(2026, 1, 1, 1, 2, tzinfo=get_zone("Europe/Chisinau"))
    got = schedule.upcoming(after, 3)
    assert got == [z("2025-12-31T23:05"), z("2025-12-31T23:10"), z("2025-12-31T23:15")]
    assert all(t.tzinfo is UTC for t in got)


# --------------------------------------------------------------------------- properties

_ZONES = ["America/New_York", "Europe/Chisinau", "Australia/Lord_Howe", "Europe/London"]
_MINUTE_FIELDS = ["0", "*", "*/15", "30", "0,30", "5-10", "*/7", "59", "0-5/2"]
_HOUR_FIELDS = ["*", "1", "2", "3", "0-3", "*/2", "1,2", "2-4/2", "23"]
_DOM_FIELDS = ["*", "1", "*", "13", "L", "1-7", "31"]
_MONTH_FIELDS = ["*", "*", "3", "10,11", "3-4", "*/4"]
_DOW_FIELDS = ["*", "*", "0", "5", "1-5", "7", "SUN#2", "0L"]


@st.composite
def _crons(draw: st.DrawFn) -> str:
    parts = [_MINUTE_FIELDS, _HOUR_FIELDS, _DOM_FIELDS, _MONTH_FIELDS, _DOW_FIELDS]
    return " ".join(draw(st.sampled_from(options)) for options in parts)


@settings(max_examples=120, deadline=None)
@given(
    expr=_crons(),
    zone=st.sampled_from(_ZONES),
    after=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)),
)
def test_cron_upcoming_properties(expr: str, zone: str, after: datetime) -> None:
    try:
        schedule = sched("cron", expr, zone)
    except InvalidInput:
        return  # e.g. a date that never exists; covered elsewhere
    start = after.replace(tzinfo=UTC)
    got = schedule.upcoming(start, 20)
    assert got, expr
    assert all(t.tzinfo is UTC for t in got)
    assert all(t > start for t in got)
    assert all(a < b for a, b in itertools.pairwise(got))
    chained: list[datetime] = []
    cursor = start
    for _ in range(len(got)):
        nxt = schedule.next_after(cursor)
        assert nxt is not None
        chained.append(nxt)
        cursor = nxt
    assert chained == got


def test_far_future_does_not_overflow() -> None:
    schedule = sched("cron", "0 0 1 1 *", "UTC")
    assert schedule.next_after(z("9998-06-01T00:00")) is None
    assert sched("rrule", "FREQ=YEARLY", "UTC").next_after(z("9999-06-01T00:00")) is None


def test_hourly_peak_sees_the_next_full_hour_late_in_a_stretch() -> None:
    """Asked near the end of a day's stretch, the peak is still a full hour's (60), not what
    is left of today's (37)."""
    created = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
    late = datetime(2026, 11, 26, 15, 23, tzinfo=UTC)  # 17:23 in Chisinau, a Thursday
    for now in (created, late, datetime(2026, 11, 27, 15, 23, tzinfo=UTC)):  # and a Friday
        peak = hourly_peak(
            "cron", "*/1 9-17 * * 1-5", "Europe/Chisinau", created_at=created, now=now
        )
        assert peak == 60, now
    assert hourly_peak("cron", "*/2 * * * *", "UTC", created_at=created, now=late) == 30
    assert hourly_peak("event", "github.*", "UTC", created_at=created, now=late) == 0
