"""Every malformed request is a 4xx problem response and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.helpers import SEED_TASK, auth, snapshot


def _task(**changes: Any) -> dict[str, Any]:
    body = {**SEED_TASK, **changes}
    return {k: v for k, v in body.items() if v is not ...}


def _steps(n: int) -> dict[str, Any]:
    return {
        "pipeline": [{"id": f"s{i}", "uses": "log", "with": {"message": "x"}} for i in range(n)]
    }


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


TASK_CASES: list[tuple[str, Any, int, str | None]] = [
    ("unknown field", _task(colour="red"), 422, "colour"),
    ("missing title", _task(title=...), 422, "title"),
    ("empty title", _task(title=""), 422, "title"),
    ("long title", _task(title="x" * 201), 422, "title"),
    ("priority 0", _task(priority=0), 422, "priority"),
    ("priority 10", _task(priority=10), 422, "priority"),
    ("priority as text", _task(priority="5"), 422, "priority"),
    ("unknown kind", _task(schedule_kind="weekly"), 422, "schedule_kind"),
    ("unknown backoff", _task(backoff_strategy="random"), 422, "backoff_strategy"),
    ("negative retries", _task(max_retries=-1), 422, "max_retries"),
    ("created_by not uuid", _task(created_by="me"), 422, "created_by"),
    (
        "cron six fields",
        _task(schedule_kind="cron", schedule_expr="0 * * * * *"),
        422,
        "schedule_expr",
    ),
    ("cron @reboot", _task(schedule_kind="cron", schedule_expr="@reboot"), 422, "schedule_expr"),
    (
        "cron minute 61",
        _task(schedule_kind="cron", schedule_expr="61 * * * *"),
        422,
        "schedule_expr",
    ),
    (
        "cron never fires",
        _task(schedule_kind="cron", schedule_expr="0 0 30 2 *"),
        422,
        "schedule_expr",
    ),
    ("cron garbage", _task(schedule_kind="cron", schedule_expr="every day"), 422, "schedule_expr"),
    ("rrule secondly", _task(schedule_expr="FREQ=SECONDLY"), 422, "schedule_expr"),
    (
        "rrule twice a minute",
        _task(schedule_expr="FREQ=MINUTELY;BYSECOND=0,30"),
        422,
        "schedule_expr",
    ),
    (
        "rrule never fires",
        _task(schedule_expr="FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"),
        422,
        "schedule_expr",
    ),
    ("rrule garbage", _task(schedule_expr="FREQ=FORTNIGHTLY"), 422, "schedule_expr"),
    # dateutil steps forever on INTERVAL=0: this once hung the API and ate its memory.
    ("rrule interval 0", _task(schedule_expr="FREQ=DAILY;INTERVAL=0"), 422, "schedule_expr"),
    ("rrule interval -1", _task(schedule_expr="FREQ=DAILY;INTERVAL=-1"), 422, "schedule_expr"),
    ("once garbage", _task(schedule_kind="once", schedule_expr="tomorrow"), 422, "schedule_expr"),
    (
        "once in the past",
        _task(schedule_kind="once", schedule_expr="2020-01-01T00:00:00Z"),
        422,
        "schedule_expr",
    ),
    (
        "once month 13",
        _task(schedule_kind="once", schedule_expr="2030-13-01T00:00"),
        422,
        "schedule_expr",
    ),
    (
        "event bad pattern",
        _task(schedule_kind="event", schedule_expr="git*hub"),
        422,
        "schedule_expr",
    ),
    ("unknown zone", _task(timezone="Mars/Olympus"), 422, "timezone"),
    ("zone path trick", _task(timezone="../../etc/passwd"), 422, "timezone"),
    ("51 steps", _task(payload=_steps(51)), 422, "payload.pipeline"),
    (
        "later step referenced",
        _task(
            payload={
                "pipeline": [
                    {"id": "a", "uses": "log", "with": {"message": "${steps.b.text}"}},
                    {"id": "b", "uses": "log", "with": {"message": "hi"}},
                ]
            }
        ),
        422,
        "payload.pipeline[0].with.message",
    ),
    (
        "unknown tool",
        _task(payload={"pipeline": [{"id": "a", "uses": "nope"}]}),
        422,
        "payload.pipeline[0].uses",
    ),
    (
        "undeclared mcp server",
        _task(payload={"pipeline": [{"id": "a", "uses": "weather-mcp.forecast"}]}),
        422,
        "payload.pipeline[0].uses",
    ),
    (
        "with breaks the schema",
        _task(payload={"pipeline": [{"id": "a", "uses": "sleep", "with": {"seconds": "ten"}}]}),
        422,
        "payload.pipeline[0].with.seconds",
    ),
    (
        "duplicate step ids",
        _task(payload={"pipeline": [{"id": "a", "uses": "log", "with": {"message": "x"}}] * 2}),
        422,
        None,
    ),
    (
        "template evaluates code",
        _task(
            payload={
                "pipeline": [{"id": "a", "uses": "log", "with": {"message": "${__import__('os')}"}}]
            }
        ),
        422,
        "payload.pipeline[0].with.message",
    ),
    (
        "template reads the environment",
        _task(
            payload={"pipeline": [{"id": "a", "uses": "log", "with": {"message": "${env.HOME}"}}]}
        ),
        422,
        "payload.pipeline[0].with.message",
    ),
    ("pipeline not a list", _task(payload={"pipeline": {"id": "a"}}), 422, "payload.pipeline"),
    ("payload not an object", _task(payload=[1, 2]), 422, "payload"),
    ("bad dedupe template", _task(dedupe_key="${steps.a"), 422, "dedupe_key"),
    ("payload nested too deep", _task(payload=_nested(80)), 422, None),
    ("body is a list", [SEED_TASK], 422, None),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "field"), TASK_CASES, ids=[c[0] for c in TASK_CASES]
)
def test_bad_task_bodies(
    client: TestClient,
    writer_token: str,
    db: psycopg.Connection[Any],
    name: str,
    body: Any,
    status: int,
    field: str | None,
) -> None:
    before = snapshot(db)
    resp = client.post("/tasks", json=body, headers=auth(writer_token))
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert {"type", "title", "status", "detail", "request_id"} <= set(problem)
    assert problem["status"] == status
    assert problem["request_id"] == resp.headers["X-Request-ID"]
    if field is not None:
        fields = [e["field"] for e in problem["errors"]]
        assert any(f == field or f.startswith(field) for f in fields), fields
    assert snapshot(db) == before


RAW_CASES: list[tuple[str, bytes, int]] = [
    ("NUL in title", json.dumps(_task(title="a\x00b")).encode(), 422),
    ("NUL in a payload key", json.dumps(_task(payload={"a\x00": 1})).encode(), 422),
    ("lone surrogate", json.dumps(_task(description="\ud800")).encode(), 422),
    ("malformed json", b'{"title": ', 422),
    ("not utf-8", b'{"title": "\xff\xfe"}', 400),
    ("very deep nesting", b'{"payload": ' + b"[" * 60_000 + b"]" * 60_000 + b"}", 422),
    ("over 256 KiB", json.dumps(_task(description="x" * (300 * 1024))).encode(), 413),
]


@pytest.mark.parametrize(("name", "raw", "status"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_bad_raw_bodies(
    client: TestClient,
    writer_token: str,
    db: psycopg.Connection[Any],
    name: str,
    raw: bytes,
    status: int,
) -> None:
    before = snapshot(db)
    resp = client.post(
        "/tasks", content=raw, headers={**auth(writer_token), "Content-Type": "application/json"}
    )
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert snapshot(db) == before


def test_bad_requests_elsewhere(
    client: TestClient, writer_token: str, admin_token: str, db: psycopg.Connection[Any]
) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    tid = task["id"]
    before = snapshot(db)
    cases: list[tuple[str, str, Any, dict[str, str], int]] = [
        ("GET", "/tasks", None, {"limit": "0"}, 422),
        ("GET", "/tasks", None, {"limit": "101"}, 422),
        ("GET", "/tasks", None, {"cursor": "garbage!"}, 422),
        ("GET", "/tasks", None, {"status": "sleeping"}, 422),
        ("GET", "/tasks/not-a-uuid", None, {}, 422),
        ("GET", "/tasks/00000000-0000-0000-0000-000000000000", None, {}, 404),
        ("GET", f"/tasks/{tid}/occurrences", None, {"count": "1000"}, 422),
        ("GET", f"/tasks/{tid}/occurrences", None, {"from": "2026-01-01T00:00:00"}, 422),
        ("PUT", f"/tasks/{tid}", {"status": "completed"}, {}, 422),
        ("PUT", f"/tasks/{tid}", {"title": None}, {}, 422),
        ("PUT", f"/tasks/{tid}", {"schedule_expr": "FREQ=SECONDLY"}, {}, 422),
        ("PUT", f"/tasks/{tid}", {"schedule_kind": "cron"}, {}, 422),
        ("POST", f"/tasks/{tid}/snooze", {"seconds": 0}, {}, 422),
        ("POST", f"/tasks/{tid}/snooze", {"seconds": "x"}, {}, 422),
        ("POST", f"/tasks/{tid}/snooze", {}, {}, 422),
        ("POST", "/tasks/preview", {"schedule_kind": "cron", "schedule_expr": "* * *"}, {}, 422),
        (
            "POST",
            "/tasks/preview",
            {"schedule_kind": "cron", "schedule_expr": "* * * * *", "count": 101},
            {},
            422,
        ),
        ("POST", "/events", {"type": "has space"}, {}, 422),
        ("POST", "/events", {"payload": {}}, {}, 422),
        ("POST", "/events", {"type": "a", "payload": [1]}, {}, 422),
        ("GET", "/runs", None, {"status": "lost"}, 422),
        ("GET", "/runs/00000000-0000-0000-0000-000000000000/logs", None, {}, 404),
        ("DELETE", f"/tasks/{tid}", None, {}, 405),
        ("GET", "/nowhere", None, {}, 404),
    ]
    for method, path, body, params, status in cases:
        resp = client.request(method, path, json=body, params=params, headers=auth(writer_token))
        assert resp.status_code == status, (method, path, body, resp.text)
        assert resp.headers["content-type"] == "application/problem+json", (method, path)
    admin_cases: list[tuple[str, str, Any, int]] = [
        ("POST", "/agents", {"name": "x", "scopes": ["root"]}, 422),
        ("POST", "/agents", {"name": "x", "scopes": ["admin"], "is_admin": True}, 422),
        ("POST", "/agents", {"name": "x", "scopes": []}, 422),
        (
            "POST",
            "/agents",
            {"name": "x", "scopes": ["tasks:read"], "expires_at": "2030-01-01T00:00"},
            422,
        ),
        # JSON has no time type: a number is not a time (pydantic would read Unix seconds).
        ("POST", "/agents", {"name": "x", "scopes": ["tasks:read"], "expires_at": 0.0}, 422),
        ("POST", "/agents", {"name": "x", "scopes": ["tasks:read"], "expires_at": 2e9}, 422),
        ("POST", "/agents", {"name": "x", "scopes": ["tasks:read"], "expires_at": True}, 422),
        ("POST", "/agents", {"name": "x", "scopes": ["tasks:read"], "expires_at": "0"}, 422),
        ("POST", "/agents", {"name": "x", "scopes": ["tasks:read"], "expires_at": "2e9"}, 422),
        ("PUT", "/agents/00000000-0000-0000-0000-000000000000", {"name": "y"}, 404),
        ("DELETE", "/agents/00000000-0000-0000-0000-000000000000", None, 404),
    ]
    for method, path, body, status in admin_cases:
        resp = client.request(method, path, json=body, headers=auth(admin_token))
        assert resp.status_code == status, (method, path, body, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    assert snapshot(db) == before
