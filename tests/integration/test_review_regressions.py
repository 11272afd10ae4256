"""Inputs that once slipped past validation, and contract details that once drifted."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.helpers import SEED_TASK, auth, snapshot


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/tasks", {"cursor": _cursor(["2020-01-01T00:00:00+00:00", 5])}),
        ("/runs", {"cursor": _cursor(["2020-01-01T00:00:00+00:00", ["a"]])}),
        ("/agents", {"cursor": _cursor([1, 2])}),
        ("/tasks", {"cursor": _cursor("just a string")}),
        (
            "/tasks",
            {"cursor": _cursor(["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"])},
        ),
    ],
)
def test_foreign_cursors_are_422(
    client: TestClient, admin_token: str, path: str, params: dict[str, str]
) -> None:
    resp = client.get(path, params=params, headers=auth(admin_token))
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "query.cursor"


def test_log_cursor_and_if_match_with_odd_digits(client: TestClient, writer_token: str) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
    for cursor in ("²", "12", _cursor([-1]), _cursor([True]), _cursor([2**70])):
        resp = client.get(
            f"/runs/{run['id']}/logs", params={"cursor": cursor}, headers=auth(writer_token)
        )
        assert resp.status_code == 422, (cursor, resp.text)
    odd = client.put(
        f"/tasks/{task['id']}",
        json={"title": "x"},
        headers=[
            (b"Authorization", f"Bearer {writer_token}".encode()),
            (b"If-Match", '"²"'.encode("latin-1")),
        ],
    )
    assert odd.status_code == 422


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("Application/JSON", json.dumps({**SEED_TASK, "title": "a\x00b"})),
        ("text/plain", json.dumps({**SEED_TASK, "title": "a\x00b"})),
        ("application/json", '{"type": "a", "payload": {"x": NaN}}'),
        ("application/json", '{"type": "a", "payload": {"x": -Infinity}}'),
        ("application/json", '{"type": "a", "payload": {"x": 1e999}}'),
    ],
)
def test_bodies_are_vetted_whatever_they_claim_to_be(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], content_type: str, raw: str
) -> None:
    before = snapshot(db)
    path = "/events" if '"type"' in raw[:10] else "/tasks"
    resp = client.post(
        path, content=raw, headers={**auth(writer_token), "Content-Type": content_type}
    )
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert snapshot(db) == before


def test_far_future_times_are_refused(client: TestClient, writer_token: str) -> None:
    far = client.post(
        "/tasks",
        json={**SEED_TASK, "schedule_kind": "once", "schedule_expr": "9999-12-31T23:00:00+00:00"},
        headers=auth(writer_token),
    )
    assert far.status_code == 422
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    for start in ("0001-01-01T00:00:00+14:00", "9999-12-01T00:00:00Z"):
        resp = client.get(
            f"/tasks/{task['id']}/occurrences", params={"from": start}, headers=auth(writer_token)
        )
        assert resp.status_code == 422, resp.text


def test_the_last_admin_cannot_lock_everyone_out(
    client: TestClient,
    admin_token: str,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    me = str(db.execute("SELECT id FROM agents WHERE name = 'root'").fetchone()[0])  # type: ignore[index]
    for method, body in (
        ("PUT", {"scopes": ["tasks:read"]}),
        ("PUT", {"disabled": True}),
        ("DELETE", None),
    ):
        resp = client.request(method, f"/agents/{me}", json=body, headers=auth(admin_token))
        assert resp.status_code == 409, resp.text
    assert client.get("/agents", headers=auth(admin_token)).status_code == 200
    make_token("admin", name="second")
    assert (
        client.put(f"/agents/{me}", json={"disabled": True}, headers=auth(admin_token)).status_code
        == 200
    )


def test_replay_is_the_first_response_byte_for_byte(client: TestClient, writer_token: str) -> None:
    headers = {**auth(writer_token), "Idempotency-Key": "bytes"}
    first = client.post("/tasks", json=SEED_TASK, headers=headers)
    again = client.post(
        "/tasks",
        content=json.dumps(SEED_TASK, indent=2),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    # Spelling out a default is a different body.
    explicit = client.post("/tasks", json={**SEED_TASK, "priority": 5}, headers=headers)
    assert explicit.status_code == 422


def test_client_request_ids_are_echoed(client: TestClient) -> None:
    for rid in ("{3F2504E0-4F89-11D3-9A0C-0305E82C3301}", "a/b", "x" * 128):
        assert (
            client.get("/health/live", headers={"X-Request-ID": rid}).headers["X-Request-ID"] == rid
        )
    replaced = client.get("/health/live", headers={"X-Request-ID": "x" * 129}).headers[
        "X-Request-ID"
    ]
    assert len(replaced) == 32


def test_renaming_a_once_task_after_its_time(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    task = client.post(
        "/tasks",
        json={**SEED_TASK, "schedule_kind": "once", "schedule_expr": "2030-01-01T09:00:00"},
        headers=auth(writer_token),
    ).json()
    db.execute(
        "UPDATE tasks SET schedule_expr = '2020-01-01T09:00:00', next_run_at = NULL WHERE id = %s",
        (task["id"],),
    )
    resp = client.put(f"/tasks/{task['id']}", json={"title": "renamed"}, headers=auth(writer_token))
    assert resp.status_code == 200, resp.text


def test_priority_changes_reach_queued_work(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token))
    client.put(f"/tasks/{task['id']}", json={"priority": 1}, headers=auth(writer_token))
    assert db.execute("SELECT priority FROM due_work").fetchall() == [(1,)]
