"""The task endpoints against a real database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi.testclient import TestClient

from pao.db import connect
from pao.domain import events
from pao.settings import Settings
from pao.store import events as event_store
from tests.helpers import SEED_TASK, auth


def _next_weekday_0830(now: datetime, zone: ZoneInfo) -> datetime:
    local = now.astimezone(zone)
    for days in range(8):
        day = (local + timedelta(days=days)).date()
        candidate = datetime(day.year, day.month, day.day, 8, 30, tzinfo=zone)
        if candidate.weekday() < 5 and candidate > now:
            return candidate.astimezone(UTC)
    raise AssertionError("no weekday in a week")


def test_seed_example_is_created_with_next_weekday_0830(
    client: TestClient, admin_token: str
) -> None:
    before = datetime.now(UTC)
    resp = client.post("/tasks", json=SEED_TASK, headers=auth(admin_token))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    expected = _next_weekday_0830(before, ZoneInfo("Europe/Chisinau"))
    assert datetime.fromisoformat(body["next_run_at"]) == expected
    assert body["status"] == "active"
    assert body["priority"] == 5
    assert body["backoff_strategy"] == "exponential_jitter"
    assert body["max_retries"] == 3
    assert resp.headers["Location"] == f"/tasks/{body['id']}"
    got = client.get(f"/tasks/{body['id']}", headers=auth(admin_token))
    assert got.status_code == 200
    assert got.json() == body


def test_create_writes_one_audit_row(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    resp = client.post(
        "/tasks", json=SEED_TASK, headers={**auth(writer_token), "X-Request-ID": "req-42"}
    )
    assert resp.status_code == 201
    assert resp.headers["X-Request-ID"] == "req-42"
    rows = db.execute(
        "SELECT action, target_id, request_id FROM audit_log WHERE target_type = 'task'"
    ).fetchall()
    assert rows == [("task.create", resp.json()["id"], "req-42")]


def test_default_timezone_applies(client: TestClient, writer_token: str) -> None:
    task = {**SEED_TASK}
    del task["timezone"]
    resp = client.post("/tasks", json=task, headers=auth(writer_token))
    assert resp.status_code == 201
    assert resp.json()["timezone"] == "Europe/Chisinau"


def test_list_paginates_and_filters(client: TestClient, writer_token: str) -> None:
    ids = []
    for i in range(5):
        body = {**SEED_TASK, "title": f"t{i}"}
        if i % 2:
            body = {**body, "schedule_kind": "event", "schedule_expr": "github.*"}
        ids.append(client.post("/tasks", json=body, headers=auth(writer_token)).json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/tasks", params=params, headers=auth(writer_token)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    events = client.get("/tasks", params={"schedule_kind": "event"}, headers=auth(writer_token))
    assert {t["id"] for t in events.json()["items"]} == {ids[1], ids[3]}


def test_preview_and_occurrences(client: TestClient, writer_token: str) -> None:
    preview = client.post(
        "/tasks/preview",
        json={
            "schedule_kind": "cron",
            "schedule_expr": "30 2 * * *",
            "timezone": "America/New_York",
            "count": 3,
        },
        headers=auth(writer_token),
    )
    assert preview.status_code == 200, preview.text
    items = preview.json()["items"]
    assert len(items) == 3
    for item in items:
        local = datetime.fromisoformat(item["local"])
        assert datetime.fromisoformat(item["at"]) == local
    created = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    occ = client.get(
        f"/tasks/{created['id']}/occurrences",
        params={"count": 5, "from": "2027-07-01T00:00:00Z"},
        headers=auth(writer_token),
    )
    assert occ.status_code == 200
    # July 2027 in Chisinau is UTC+3: 08:30 local is 05:30Z, on weekdays from Thu 1 July.
    assert [o["at"] for o in occ.json()["items"]] == [
        "2027-07-01T05:30:00Z",
        "2027-07-02T05:30:00Z",
        "2027-07-05T05:30:00Z",
        "2027-07-06T05:30:00Z",
        "2027-07-07T05:30:00Z",
    ]
    assert occ.json()["items"][0]["local"] == "2027-07-01T08:30:00+03:00"


def test_update_recomputes_next_run(client: TestClient, writer_token: str) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    resp = client.put(
        f"/tasks/{task['id']}",
        json={"schedule_kind": "cron", "schedule_expr": "0 0 1 1 *", "timezone": "UTC"},
        headers=auth(writer_token),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    now = datetime.now(UTC)
    assert datetime.fromisoformat(body["next_run_at"]) == datetime(now.year + 1, 1, 1, tzinfo=UTC)
    assert body["version"] == task["version"] + 1
    title_only = client.put(f"/tasks/{task['id']}", json={"title": "x"}, headers=auth(writer_token))
    assert title_only.json()["next_run_at"] == body["next_run_at"]


def test_update_with_stale_if_match_is_refused(client: TestClient, writer_token: str) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    ok = client.put(
        f"/tasks/{task['id']}",
        json={"title": "a"},
        headers={**auth(writer_token), "If-Match": '"1"'},
    )
    assert ok.status_code == 200
    assert ok.headers["ETag"] == '"2"'
    stale = client.put(
        f"/tasks/{task['id']}",
        json={"title": "b"},
        headers={**auth(writer_token), "If-Match": '"1"'},
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"


def test_pause_resume_snooze_cancel(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    tid = task["id"]
    paused = client.post(f"/tasks/{tid}/pause", headers=auth(writer_token)).json()
    assert paused["status"] == "paused"
    assert paused["next_run_at"] is None
    assert (
        client.post(
            f"/tasks/{tid}/snooze", json={"seconds": 60}, headers=auth(writer_token)
        ).status_code
        == 409
    )
    resumed = client.post(f"/tasks/{tid}/resume", headers=auth(writer_token)).json()
    assert resumed["status"] == "active"
    assert resumed["next_run_at"] == task["next_run_at"]
    snoozed = client.post(f"/tasks/{tid}/snooze", json={"seconds": 600}, headers=auth(writer_token))
    assert snoozed.status_code == 200
    delta = datetime.fromisoformat(snoozed.json()["next_run_at"]) - datetime.fromisoformat(
        task["next_run_at"]
    )
    assert delta == timedelta(seconds=600)
    run = client.post(f"/tasks/{tid}/run_now", headers=auth(writer_token))
    assert run.status_code == 202
    assert run.json()["status"] == "queued"
    cancelled = client.post(f"/tasks/{tid}/cancel", headers=auth(writer_token)).json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["next_run_at"] is None
    states = db.execute("SELECT state FROM due_work WHERE task_id = %s", (tid,)).fetchall()
    assert states == [("cancelled",)]
    run_after = client.get(f"/runs/{run.json()['id']}", headers=auth(writer_token)).json()
    assert run_after["status"] == "cancelled"
    assert client.post(f"/tasks/{tid}/run_now", headers=auth(writer_token)).status_code == 409
    actions = [
        r[0]
        for r in db.execute(
            "SELECT action FROM audit_log WHERE target_type = 'task' ORDER BY id"
        ).fetchall()
    ]
    assert actions == [
        "task.create",
        "task.pause",
        "task.resume",
        "task.snooze",
        "task.run_now",
        "task.cancel",
    ]


def test_run_now_queues_due_work_and_run(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
    row = db.execute(
        "SELECT d.state, d.reason, d.priority, r.attempt FROM due_work d "
        "JOIN runs r ON r.due_work_id = d.id WHERE r.id = %s",
        (run["id"],),
    ).fetchone()
    assert row == ("queued", "run_now", 5, 1)
    listed = client.get("/runs", params={"task_id": task["id"]}, headers=auth(writer_token)).json()
    assert [r["id"] for r in listed["items"]] == [run["id"]]
    cancel = client.post(f"/runs/{run['id']}/cancel", headers=auth(writer_token))
    assert cancel.status_code == 202
    assert cancel.json()["status"] == "cancelled"
    again = client.post(f"/runs/{run['id']}/cancel", headers=auth(writer_token))
    assert again.status_code == 409


def test_events_fan_out_to_matching_tasks(
    client: TestClient,
    writer_token: str,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    def event_task(pattern: str) -> str:
        body = {**SEED_TASK, "schedule_kind": "event", "schedule_expr": pattern}
        resp = client.post("/tasks", json=body, headers=auth(writer_token))
        assert resp.status_code == 201, resp.text
        assert resp.json()["next_run_at"] is None
        return str(resp.json()["id"])

    exact = event_task("github.push")
    prefix = event_task("github.*")
    other = event_task("gitlab.push")
    paused = event_task("github.push")
    client.post(f"/tasks/{paused}/pause", headers=auth(writer_token))
    # Another agent's event reaches these tasks through its audience (events:broadcast).
    publisher = make_token("events:publish", "events:broadcast", name="ingest")
    resp = client.post(
        "/events",
        json={"type": "github.push", "payload": {"ref": "main"}, "audience": "*"},
        headers=auth(publisher),
    )
    assert resp.status_code == 202, resp.text
    # The publisher learns nothing about other agents' tasks...
    assert resp.json()["queued"] == 0
    queued = {
        r[0]
        for r in db.execute("SELECT task_id::text FROM due_work WHERE reason = 'event'").fetchall()
    }
    assert queued == {exact, prefix}
    assert other not in queued
    # ...while the owner is told about its own.
    own = client.post("/events", json={"type": "github.push"}, headers=auth(writer_token))
    assert own.json()["queued"] == 2


def test_tools_lists_builtins_with_schemas(client: TestClient, writer_token: str) -> None:
    resp = client.get("/tools", headers=auth(writer_token))
    assert resp.status_code == 200
    names = {t["name"]: t for t in resp.json()["items"]}
    assert {"http.request", "events.publish", "log", "sleep"} <= set(names)
    assert names["log"]["input_schema"]["type"] == "object"


def test_stored_created_at_is_the_anchor_the_schedule_was_checked_with(
    client: TestClient, writer_token: str
) -> None:
    """An rrule without DTSTART starts at created_at: the scheduler must see the same instant."""
    from pao.schedule import parse_schedule

    for _ in range(5):
        task = client.post(
            "/tasks",
            json={**SEED_TASK, "schedule_expr": "FREQ=MINUTELY;INTERVAL=7"},
            headers=auth(writer_token),
        ).json()
        created = datetime.fromisoformat(task["created_at"])
        schedule = parse_schedule(
            "rrule", task["schedule_expr"], task["timezone"], created_at=created
        )
        assert datetime.fromisoformat(task["next_run_at"]) == schedule.next_after(created)


LIMITS = events.Limits.of(Settings())


def _writer_id(db: psycopg.Connection[Any]) -> Any:
    """The writer agent's id: events it publishes reach its own tasks."""
    row = db.execute("SELECT id FROM agents WHERE name = 'writer'").fetchone()
    assert row is not None
    return row[0]


def test_twin_events_fan_out_to_many_tasks_together(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Every matching task is queued in one statement; one taken at the event's time (here by
    a twin event) is moved on by a microsecond, and the others are not held up by it."""
    body = {**SEED_TASK, "schedule_kind": "event", "schedule_expr": "fan.*"}
    ids = [client.post("/tasks", json=body, headers=auth(writer_token)).json()["id"] for _ in "abc"]
    late = client.post(
        "/tasks", json={**body, "schedule_expr": "fan.out"}, headers=auth(writer_token)
    ).json()["id"]
    writer = _writer_id(db)

    async def publish_twins() -> list[int]:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                first = await event_store.insert_event(
                    conn, type="fan.out", payload={}, published_by=writer
                )
                second = await event_store.insert_event(
                    conn, type="fan.out", payload={}, published_by=writer
                )
                counts = []
                for event in (first, replace(second, received_at=first.received_at)):
                    counts.append(len((await events.dispatch(conn, event, LIMITS)).queued))
                return counts
        finally:
            await conn.close()

    assert asyncio.run(publish_twins()) == [4, 4]
    for task_id in [*ids, late]:
        rows = db.execute(
            "SELECT scheduled_for FROM due_work WHERE task_id = %s ORDER BY scheduled_for",
            (task_id,),
        ).fetchall()
        assert len(rows) == 2
        assert rows[1][0] - rows[0][0] == timedelta(microseconds=1)


def test_two_events_received_in_the_same_microsecond_both_fire(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Concurrent publishers can share a timestamp; each event still fires each task once."""
    body = {**SEED_TASK, "schedule_kind": "event", "schedule_expr": "twin.ping"}
    task_id = client.post("/tasks", json=body, headers=auth(writer_token)).json()["id"]
    writer = _writer_id(db)

    async def publish_twins() -> None:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                first = await event_store.insert_event(
                    conn, type="twin.ping", payload={}, published_by=writer
                )
                second = await event_store.insert_event(
                    conn, type="twin.ping", payload={}, published_by=writer
                )
                for event in (first, replace(second, received_at=first.received_at)):
                    await events.dispatch(conn, event, LIMITS)
                # Dispatching an event again queues nothing more.
                assert (await events.dispatch(conn, first, LIMITS)).queued == []
        finally:
            await conn.close()

    asyncio.run(publish_twins())
    rows = db.execute(
        "SELECT event_id, scheduled_for FROM due_work WHERE task_id = %s ORDER BY scheduled_for",
        (task_id,),
    ).fetchall()
    assert len({event_id for event_id, _ in rows}) == 2
    assert rows[1][1] - rows[0][1] == timedelta(microseconds=1)
    decided = db.execute(
        "SELECT count(*) FROM occurrences WHERE task_id = %s AND decision = 'queued'", (task_id,)
    ).fetchone()
    assert decided == (2,)
