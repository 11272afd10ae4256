"""Money and its windows: costs parsed exactly, and the hour, day and month of an agent's
zone worked out from an explicit `now`, DST change days included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pao.costs import CostError, Window, parse_cost, text, windows
from pao.settings import Settings, SettingsError
from pao.tools import McpServerConfig, ToolRegistry, ToolsFileError
from pao.zones import get_zone

NEW_YORK = get_zone("America/New_York")
CHISINAU = get_zone("Europe/Chisinau")


def z(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *rest: int) -> datetime:
    second, micro = (*rest, 0, 0)[:2]
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "at", "starts", "hours"),
    [
        # New York springs forward on 2026-03-08 (23 hours) and falls back on 2026-11-01 (25).
        (NEW_YORK, z(2026, 3, 8, 12), z(2026, 3, 8, 5), 23),
        (NEW_YORK, z(2026, 3, 8, 4, 59, 59), z(2026, 3, 7, 5), 24),
        (NEW_YORK, z(2026, 3, 9, 3, 59, 59), z(2026, 3, 8, 5), 23),
        (NEW_YORK, z(2026, 3, 9, 4), z(2026, 3, 9, 4), 24),
        (NEW_YORK, z(2026, 11, 1, 12), z(2026, 11, 1, 4), 25),
        (NEW_YORK, z(2026, 11, 2, 4, 59, 59), z(2026, 11, 1, 4), 25),
        (NEW_YORK, z(2026, 11, 2, 5), z(2026, 11, 2, 5), 24),
        # Chisinau: 2026-03-29 (02:00 → 03:00) and 2026-10-25 (03:00 → 02:00).
        (CHISINAU, z(2026, 3, 29, 12), z(2026, 3, 28, 22), 23),
        (CHISINAU, z(2026, 3, 28, 21, 59, 59), z(2026, 3, 27, 22), 24),
        (CHISINAU, z(2026, 10, 25, 12), z(2026, 10, 24, 21), 25),
        (CHISINAU, z(2026, 10, 25, 22), z(2026, 10, 25, 22), 24),
    ],
)
def test_a_day_runs_from_local_midnight_to_local_midnight(
    zone: object, at: datetime, starts: datetime, hours: int
) -> None:
    day = windows(at, zone).day  # type: ignore[arg-type]
    assert day.starts_at == starts
    assert day.ends_at - day.starts_at == timedelta(hours=hours)
    assert day.starts_at <= at < day.ends_at


def test_months_and_hours() -> None:
    w = windows(z(2026, 3, 15, 12, 34, 56), NEW_YORK)
    # March in New York: EST at its start, EDT at its end.
    assert w.month == Window(z(2026, 3, 1, 5), z(2026, 4, 1, 4))
    assert w.hour == Window(z(2026, 3, 15, 12), z(2026, 3, 15, 13))
    december = windows(z(2026, 12, 31, 23), CHISINAU)
    assert december.month == Window(z(2026, 12, 31, 22), z(2027, 1, 31, 22))
    # The repeated hour of a fall-back night is two hours of its own.
    first = windows(z(2026, 11, 1, 5, 30), NEW_YORK).hour
    second = windows(z(2026, 11, 1, 6, 30), NEW_YORK).hour
    assert (first.starts_at, second.starts_at) == (z(2026, 11, 1, 5), z(2026, 11, 1, 6))
    # A zone with a half-hour offset: its hours start at half past, UTC.
    india = windows(z(2026, 1, 1, 10, 45), get_zone("Asia/Kolkata")).hour
    assert india == Window(z(2026, 1, 1, 10, 30), z(2026, 1, 1, 11, 30))


def test_retry_after_is_whole_seconds_to_the_end() -> None:
    day = windows(z(2026, 3, 8, 12), NEW_YORK).day
    assert day.seconds_left(z(2026, 3, 9, 3, 59, 59, 1)) == 1
    assert day.seconds_left(z(2026, 3, 9, 3, 59, 0)) == 60
    assert day.seconds_left(z(2026, 3, 9, 5)) == 1  # never 0 or less


@pytest.mark.parametrize("good", [0, 1, 0.5, "2.25", "1000000000", Decimal("0.000001")])
def test_a_cost_is_exact(good: object) -> None:
    assert parse_cost(good, "x") == Decimal(str(good))


@pytest.mark.parametrize(
    "bad", [-1, "-0.5", "NaN", float("inf"), "1e10", 0.0000001, "abc", True, None, [1]]
)
def test_not_a_cost(bad: object) -> None:
    with pytest.raises(CostError, match=r"^x: "):
        parse_cost(bad, "x")


def test_costs_as_text() -> None:
    assert [text(Decimal(v)) for v in ("1.50", "100", "1E+2", "0.000001")] == [
        "1.5",
        "100",
        "100",
        "0.000001",
    ]
    assert text(None) == "0"


def test_tool_costs_from_settings_and_the_tools_file() -> None:
    settings = Settings.from_env({"PAO_TOOL_COSTS": "log=0.5, http.request=2"})
    assert settings.tool_costs == (("http.request", Decimal(2)), ("log", Decimal("0.5")))
    for raw in ("log", "log=-1", "log=1,log=2", "=1", "log=1e11"):
        with pytest.raises(SettingsError, match="PAO_TOOL_COSTS"):
            Settings.from_env({"PAO_TOOL_COSTS": raw})
    with pytest.raises(ToolsFileError, match="not a built-in tool"):
        ToolRegistry(costs=[("weather.forecast", Decimal(1))])
    servers = {
        "flat": McpServerConfig(command=["x"], cost_per_call=0.25),
        "each": McpServerConfig(url="http://h/mcp", cost_per_call={"send": "0.1"}),
    }
    registry = ToolRegistry(servers, costs=settings.tool_costs)
    assert registry.cost_of("log") == Decimal("0.5")
    assert registry.cost_of("sleep") is None
    assert registry.cost_of("flat.anything") == Decimal("0.25")
    assert registry.cost_of("each.send") == Decimal("0.1")
    assert registry.cost_of("each.other") is None
    assert registry.resolve("each.send").cost_per_call == Decimal("0.1")  # type: ignore[union-attr]
