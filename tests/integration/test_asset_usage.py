"""GET /agents/{id}/usage counts assets: the bytes kept now, against the quota, and those
of the kept assets created today and this month, in the agent's zone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from pao.settings import Settings
from tests.helpers import auth


def _upload(client: TestClient, token: str, size: int) -> dict[str, Any]:
    resp = client.post(
        "/assets",
        files={"file": ("notes.txt", b"x" * size, "text/plain")},
        headers=auth(token),
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _usage(client: TestClient, token: str, who: str = "me") -> dict[str, Any]:
    resp = client.get(f"/agents/{who}/usage", headers=auth(token))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_usage_counts_the_asset_bytes_kept_and_those_added_in_each_window(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
    settings: Settings,
) -> None:
    token = make_token("runs:read", "assets:read", "assets:write", name="keeper")
    other = make_token("runs:read", "assets:read", "assets:write", name="other")
    empty = _usage(client, token)
    assert empty["asset_bytes"] == 0
    assert empty["asset_quota_bytes"] == settings.asset_quota_bytes
    assert empty["today"]["asset_bytes_added"] == 0
    assert empty["this_month"]["asset_bytes_added"] == 0

    today, month = empty["today"], empty["this_month"]
    day_start, month_start = _at(today["starts_at"]), _at(month["starts_at"])
    sizes = {"now": 100, "day_edge": 2_000, "before_day": 30_000, "last_month": 400_000}
    made = {name: _upload(client, token, size) for name, size in sizes.items()}
    gone = _upload(client, token, 5_000_000)
    _upload(client, other, 7)  # another agent's bytes are its own
    # Move three of them back in time: at the day's first instant (counted today), just
    # before it (this month, unless today is the 1st), and before the month began.
    moved = {
        "day_edge": day_start,
        "before_day": day_start - timedelta(microseconds=1),
        "last_month": month_start - timedelta(microseconds=1),
    }
    for name, at in moved.items():
        db.execute("UPDATE assets SET created_at = %s WHERE id = %s", (at, made[name]["id"]))
    assert client.delete(f"/assets/{gone['id']}", headers=auth(token)).status_code == 204

    usage = _usage(client, token)
    assert usage["asset_bytes"] == sum(sizes.values())
    assert usage["today"]["asset_bytes_added"] == sizes["now"] + sizes["day_edge"]
    in_month = sizes["now"] + sizes["day_edge"]
    if moved["before_day"] >= month_start:
        in_month += sizes["before_day"]
    assert usage["this_month"]["asset_bytes_added"] == in_month
    # An admin reads the same figures; the other agent sees only its own.
    keeper_id = made["now"]["created_by"]
    assert _usage(client, admin_token, keeper_id) == usage
    assert _usage(client, other, "me")["asset_bytes"] == 7
    resp = client.get(f"/agents/{keeper_id}/usage", headers=auth(other))
    assert resp.status_code == 404


def test_the_day_is_the_agent_s_own(
    client: TestClient, make_token: Callable[..., str], admin_token: str
) -> None:
    """An asset made now is today's in whatever zone the agent counts in."""
    token = make_token("runs:read", "assets:write", name="far")
    asset = _upload(client, token, 321)
    agent_id = asset["created_by"]
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):  # UTC+14, UTC-11
        resp = client.put(f"/agents/{agent_id}", json={"timezone": zone}, headers=auth(admin_token))
        assert resp.status_code == 200, resp.text
        usage = _usage(client, token)
        assert usage["timezone"] == zone
        assert usage["today"]["asset_bytes_added"] == 321
        assert _at(usage["today"]["starts_at"]) <= _at(asset["created_at"])
        assert _at(asset["created_at"]) < _at(usage["today"]["ends_at"])
