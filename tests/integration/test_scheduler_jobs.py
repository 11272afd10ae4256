"""The scheduler's jobs against a real database, driven by a clock the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao import db as pao_db
from pao.settings import Settings
from pao.store import events as event_store
from scheduler.service import Scheduler
from tests.helpers import SEED_TASK, auth

T = TypeVar("T")


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def with_scheduler(
    db_url: str,
    body: Callable[[Scheduler], Awaitable[T]],
    *,
    clock: Callable[[], datetime] | None = None,
    **settings: Any,
) -> T:
    async def go() -> T:
        pool = pao_db.make_pool(db_url, min_size=1, max_size=2)
        await pool.open(wait=True)
        try:
            sched = Scheduler(Settings(**settings), pool, clock=clock)
            return await body(sched)
        finally:
            await pool.close()

    return asyncio.run(go())


def _create(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    resp = client.post("/tasks", json={**SEED_TASK, **fields}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _times(db: psycopg.Connection[Any], task_id: str) -> list[str]:
    rows = db.execute(
        "SELECT scheduled_for FROM due_work WHERE task_id = %s ORDER BY 1", (task_id,)
    ).fetchall()
    return [r[0].astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ") for r in rows]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (
            datetime(2026, 3, 7, 12, tzinfo=UTC),
            {
                "30 2 * * *": ["2026-03-08T07:30Z", "2026-03-09T06:30Z"],
                "30 1 * * *": ["2026-03-08T06:30Z", "2026-03-09T05:30Z"],
            },
        ),
        (
            datetime(2026, 10, 31, 12, tzinfo=UTC),
            {
                "30 2 * * *": ["2026-11-01T07:30Z", "2026-11-02T07:30Z"],
                "30 1 * * *": ["2026-11-01T05:30Z", "2026-11-02T06:30Z"],
            },
        ),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_dst_end_to_end_with_a_fake_clock(
    client: TestClient,
    writer_token: str,
    db: psycopg.Connection[Any],
    db_url: str,
    start: datetime,
    expected: dict[str, list[str]],
) -> None:
    """Materialised rows across a New York DST change follow DESIGN.md exactly."""
    ids = {
        expr: _create(
            client,
            writer_token,
            schedule_kind="cron",
            schedule_expr=expr,
            timezone="America/New_York",
        )["id"]
        for expr in [*expected, "0 * * * *"]
    }
    # Rewind each task to its first fire time after the fake start (as if created then).
    for tid in ids.values():
        db.execute(
            "UPDATE tasks SET next_run_at = %s WHERE id = %s",
            (_first_after(client, writer_token, tid, start), tid),
        )
    clock = FakeClock(start)

    async def drive(sched: Scheduler) -> None:
        while clock.now < start + timedelta(hours=48):
            await sched.materialise()
            clock.now += timedelta(minutes=20)

    with_scheduler(db_url, drive, clock=clock, lookahead_seconds=1800)
    end = start + timedelta(hours=48)
    for expr, want in expected.items():
        got = [t for t in _times(db, ids[expr]) if t < end.strftime("%Y-%m-%dT%H:%MZ")]
        assert got == want, expr
    hourly = _times(db, ids["0 * * * *"])
    first_hour = datetime.strptime(hourly[0], "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
    # Every real hour fires once, the repeated 01:00 twice and the skipped 02:00 not at all,
    # which in UTC is simply every hour.
    assert hourly[:47] == [
        (first_hour + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%MZ") for h in range(47)
    ]
    decisions = db.execute("SELECT DISTINCT decision FROM occurrences").fetchall()
    assert decisions == [("queued",)]


def _first_after(client: TestClient, token: str, task_id: str, at: datetime) -> datetime:
    """The task's first fire time after `at`, from the schedule math behind the API."""
    resp = client.get(
        f"/tasks/{task_id}/occurrences",
        params={"count": 1, "from": at.isoformat()},
        headers=auth(token),
    )
    return datetime.fromisoformat(resp.json()["items"][0]["at"])


def _past(client: TestClient, token: str, task_id: str) -> list[dict[str, Any]]:
    resp = client.get(
        f"/tasks/{task_id}/occurrences", params={"past": "true", "count": 100}, headers=auth(token)
    )
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def test_pause_resume_snooze_and_run_now_leave_decision_records(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task = _create(client, writer_token, schedule_kind="cron", schedule_expr="* * * * *")
    tid = task["id"]
    # Look two minutes ahead: two occurrences are queued before they are due.
    queued = with_scheduler(db_url, lambda s: s.materialise(), lookahead_seconds=120)
    assert queued == 2
    first, second = sorted(_times(db, tid))
    assert [o["decision"] for o in _past(client, writer_token, tid)] == ["queued", "queued"]

    # Snooze takes back the first queued occurrence and moves it 90 seconds on.
    snoozed = client.post(f"/tasks/{tid}/snooze", json={"seconds": 90}, headers=auth(writer_token))
    assert snoozed.status_code == 200
    records = {o["at"][:16]: o for o in _past(client, writer_token, tid)}
    assert records[first.replace("Z", "")]["decision"] == "snoozed"
    assert "snoozed by 90s" in records[first.replace("Z", "")]["detail"]
    assert records[second.replace("Z", "")]["decision"] == "snoozed"

    # Pausing takes back what the scheduler queued meanwhile; resuming skips what fell due.
    with_scheduler(db_url, lambda s: s.materialise(), lookahead_seconds=300)
    client.post(f"/tasks/{tid}/pause", headers=auth(writer_token))
    live = db.execute(
        "SELECT count(*) FROM due_work WHERE task_id = %s AND state = 'queued'", (tid,)
    ).fetchone()
    assert live == (0,)
    db.execute("UPDATE tasks SET paused_at = now() - interval '3 minutes' WHERE id = %s", (tid,))
    client.post(f"/tasks/{tid}/resume", headers=auth(writer_token))
    decisions = [o["decision"] for o in _past(client, writer_token, tid)]
    assert decisions.count("skipped_paused") >= 3

    run = client.post(f"/tasks/{tid}/run_now", headers=auth(writer_token)).json()
    [record] = [o for o in _past(client, writer_token, tid) if o["run_id"] == run["id"]]
    assert record["decision"] == "queued"
    assert record["run_status"] == "queued"
    # Every record names a distinct nominal time.
    ats = [o["at"] for o in _past(client, writer_token, tid)]
    assert len(ats) == len(set(ats))


def test_late_once_task_past_its_grace_is_missed_and_completed(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task = _create(
        client,
        writer_token,
        schedule_kind="once",
        schedule_expr="2030-01-01T09:00:00Z",
        misfire_grace_seconds=60,
    )
    clock = FakeClock(datetime(2030, 1, 1, 9, 5, tzinfo=UTC))
    with_scheduler(db_url, lambda s: s.materialise(), clock=clock)
    got = client.get(f"/tasks/{task['id']}", headers=auth(writer_token)).json()
    assert got["status"] == "completed"
    assert got["next_run_at"] is None
    [record] = _past(client, writer_token, task["id"])
    assert record["decision"] == "missed"
    assert "misfire_grace_seconds (60)" in record["detail"]
    assert _times(db, task["id"]) == []


def _running_work(db: psycopg.Connection[Any], task_id: str, *, expired: bool) -> int:
    """Put the task's queued occurrence in the state a worker leaves it in."""
    row = db.execute(
        "UPDATE due_work SET state = 'running', lease_owner = 'worker-a', "
        "lease_expires_at = now() + (CASE WHEN %s THEN -1 ELSE 60 END) * interval '1 second' "
        "WHERE task_id = %s RETURNING id",
        (expired, task_id),
    ).fetchone()
    assert row is not None
    db.execute(
        "UPDATE runs SET status = 'running', started_at = now(), worker_id = 'worker-a' "
        "WHERE due_work_id = %s",
        (row[0],),
    )
    return int(row[0])


def test_rescue_requeues_lost_work_and_fences_the_old_worker(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task = _create(client, writer_token, max_retries=1, backoff_strategy="fixed")
    client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token))
    work_id = _running_work(db, task["id"], expired=True)
    other = _create(client, writer_token)
    client.post(f"/tasks/{other['id']}/run_now", headers=auth(writer_token))
    alive = _running_work(db, other["id"], expired=False)

    assert with_scheduler(db_url, lambda s: s.rescue(), retry_base_seconds=30) == 1
    state = db.execute(
        "SELECT state, attempt, lease_owner, run_after > now() + interval '25 seconds' "
        "FROM due_work WHERE id = %s",
        (work_id,),
    ).fetchone()
    assert state == ("queued", 2, None, True)
    runs = db.execute(
        "SELECT attempt, status, error FROM runs WHERE due_work_id = %s ORDER BY attempt",
        (work_id,),
    ).fetchall()
    assert [(a, s) for a, s, _ in runs] == [(1, "failed"), (2, "queued")]
    assert "worker-a lost its lease" in runs[0][2]
    # The old worker's late write names attempt 1 and its lease: it changes nothing.
    late = db.execute(
        "UPDATE due_work SET state = 'succeeded', finished_at = now(), lease_owner = NULL, "
        "lease_expires_at = NULL WHERE id = %s AND attempt = 1 AND lease_owner = 'worker-a'",
        (work_id,),
    )
    assert late.rowcount == 0
    # A lease still being renewed is left alone.
    assert db.execute("SELECT state FROM due_work WHERE id = %s", (alive,)).fetchone() == (
        "running",
    )

    # Lost again with no retries left: failed for good.
    db.execute(
        "UPDATE due_work SET state = 'running', lease_owner = 'worker-b', "
        "lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (work_id,),
    )
    assert with_scheduler(db_url, lambda s: s.rescue()) == 1
    final = db.execute(
        "SELECT state, finished_at IS NOT NULL FROM due_work WHERE id = %s", (work_id,)
    ).fetchone()
    assert final == ("failed", True)
    statuses = db.execute(
        "SELECT status FROM runs WHERE due_work_id = %s ORDER BY attempt", (work_id,)
    ).fetchall()
    assert statuses == [("failed",), ("failed",)]


def test_rescue_honours_a_cancel_request(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task = _create(client, writer_token)
    run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
    work_id = _running_work(db, task["id"], expired=False)
    assert client.post(f"/runs/{run['id']}/cancel", headers=auth(writer_token)).status_code == 202
    db.execute(
        "UPDATE due_work SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (work_id,),
    )
    with_scheduler(db_url, lambda s: s.rescue())
    got = client.get(f"/runs/{run['id']}", headers=auth(writer_token)).json()
    assert got["status"] == "cancelled"


def test_step_published_events_are_fanned_out_with_dedupe(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task = _create(
        client,
        writer_token,
        schedule_kind="event",
        schedule_expr="mail.*",
        payload={"pipeline": [{"id": "a", "uses": "log", "with": {"message": "${event.type}"}}]},
        dedupe_key="${event.payload.message_id}",
        dedupe_window_seconds=3600,
    )

    writer = db.execute("SELECT id FROM agents WHERE name = 'writer'").fetchone()

    async def publish_three(sched: Scheduler) -> int:
        async with pao_db.connection(sched.pool) as conn:
            for message_id in ("m1", "m1", "m2"):
                await event_store.insert_event(
                    conn,
                    type="mail.received",
                    payload={"message_id": message_id},
                    published_by=writer[0] if writer else None,
                    dispatched=False,
                )
        return await sched.dispatch_events()

    assert with_scheduler(db_url, publish_three) == 3
    decisions = sorted(o["decision"] for o in _past(client, writer_token, task["id"]))
    assert decisions == ["deduplicated", "queued", "queued"]
    pending = db.execute("SELECT count(*) FROM events WHERE dispatched_at IS NULL").fetchone()
    assert pending == (0,)


def test_housekeeping_prunes_old_history_but_keeps_dedupe_windows(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task = _create(client, writer_token, dedupe_key="k", dedupe_window_seconds=20 * 86_400)
    old = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
    new = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
    # Rows are deleted one by one only before the month the retention ends in (later ones go
    # with their month's partition, whole): 40 days is before it, whatever today's date.
    for run, age in ((old, "40 days"), (new, "1 day")):
        db.execute(
            "UPDATE due_work SET state = 'succeeded', finished_at = now() - %s::interval "
            "WHERE id = (SELECT due_work_id FROM runs WHERE id = %s)",
            (age, run["id"]),
        )
        db.execute(
            "UPDATE runs SET status = 'succeeded', started_at = now() - %s::interval, "
            "finished_at = now() - %s::interval WHERE id = %s",
            (age, age, run["id"]),
        )
    db.execute(
        "INSERT INTO dedupe_keys (task_id, key, seen_at) "
        "VALUES (%s, 'k', now() - interval '10 days')",
        (task["id"],),
    )
    db.execute(
        "UPDATE occurrences SET decided_at = now() - interval '40 days', "
        "nominal_at = nominal_at - interval '40 days'"
    )
    db.execute(
        "INSERT INTO dedupe_keys (task_id, key, seen_at) "
        "VALUES (%s, 'gone', now() - interval '25 days')",
        (task["id"],),
    )
    # Retention (5 days) is shorter than the dedupe window (20 days): the key outlives it.
    deleted = with_scheduler(db_url, lambda s: s.housekeeping(), retention_days=5)
    assert deleted >= 3
    remaining = db.execute("SELECT id::text FROM runs").fetchall()
    assert remaining == [(new["id"],)]
    keys = db.execute("SELECT key FROM dedupe_keys").fetchall()
    assert keys == [("k",)]
    assert db.execute("SELECT count(*) FROM occurrences").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM audit_log").fetchone()[0] > 0  # type: ignore[index]
