"""Fire times stored under an older tzdata release are recomputed once, with a record.

Here the older release is simulated in the database: a task's stamp is set to an old
release and its stored time to one the old rules would have given (an hour off). The
real switch of tzdata packages, with real scheduler processes, is
tests/acceptance/test_tzdata_upgrade.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from pao import db as pao_db
from pao.schedule import parse_schedule
from pao.settings import Settings
from pao.sql import QUERIES
from pao.zones import tzdata_version
from scheduler.service import Scheduler
from tests.helpers import SEED_TASK, auth, plan_nodes

OLD = "2000a"


def _create(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    resp = client.post("/tasks", json={**SEED_TASK, **fields}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _task(db: psycopg.Connection[Any], task_id: str) -> tuple[datetime, str]:
    row = db.execute(
        "SELECT next_run_at, tzdata_version FROM tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _recorded(db: psycopg.Connection[Any], task_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT nominal_at, detail FROM occurrences WHERE task_id = %s AND decision = 'recomputed'",
        (task_id,),
    ).fetchall()


def _retime(db_url: str, schedulers: int = 1) -> list[int]:
    """Run `schedulers` schedulers' retime job at the same time; how many each moved."""

    async def go() -> list[int]:
        pool = pao_db.make_pool(db_url, min_size=schedulers, max_size=schedulers + 1)
        await pool.open(wait=True)
        try:
            scheds = [Scheduler(Settings(), pool) for _ in range(schedulers)]
            return list(await asyncio.gather(*(s.retime() for s in scheds)))
        finally:
            await pool.close()

    return asyncio.run(go())


def test_a_time_from_an_older_release_is_recomputed_once_with_a_record(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    daily = _create(
        client,
        writer_token,
        schedule_kind="cron",
        schedule_expr="0 9 * * *",
        timezone="America/Havana",
    )
    right, stamp = _task(db, daily["id"])
    assert stamp == tzdata_version()  # what created it
    # As the old rules had it: an hour later.
    db.execute(
        "UPDATE tasks SET next_run_at = next_run_at + interval '1 hour', tzdata_version = %s "
        "WHERE id = %s",
        (OLD, daily["id"]),
    )
    # Stale too, but its stored time is still right: stamped, nothing recorded.
    utc = _create(
        client, writer_token, schedule_kind="cron", schedule_expr="0 9 * * *", timezone="UTC"
    )
    db.execute("UPDATE tasks SET tzdata_version = '' WHERE id = %s", (utc["id"],))
    utc_time, _ = _task(db, utc["id"])

    assert sum(_retime(db_url, schedulers=3)) == 1
    assert _task(db, daily["id"]) == (right, tzdata_version())
    [(nominal, detail)] = _recorded(db, daily["id"])
    assert nominal == right + timedelta(hours=1)
    assert f"tzdata {tzdata_version()}" in detail
    assert OLD in detail
    assert right.isoformat() in detail
    assert _task(db, utc["id"]) == (utc_time, tzdata_version())
    assert _recorded(db, utc["id"]) == []

    # Looked at again (a restart): nothing is stale, nothing moves, nothing is recorded.
    assert _retime(db_url) == [0]
    assert len(_recorded(db, daily["id"])) == 1
    # The task and its coming occurrences agree.
    occurrences = client.get(
        f"/tasks/{daily['id']}/occurrences?count=1", headers=auth(writer_token)
    )
    assert occurrences.json()["items"][0]["at"] == right.isoformat().replace("+00:00", "Z")


def test_a_pending_snooze_and_an_overdue_time_are_kept(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    snoozed = _create(
        client,
        writer_token,
        schedule_kind="cron",
        schedule_expr="0 9 * * *",
        timezone="America/Havana",
    )
    resp = client.post(
        f"/tasks/{snoozed['id']}/snooze", json={"seconds": 600}, headers=auth(writer_token)
    )
    assert resp.status_code == 200, resp.text
    moved_to, _ = _task(db, snoozed["id"])
    # An overdue time that still is a fire time: left for the misfire rules to judge.
    hourly = _create(
        client, writer_token, schedule_kind="cron", schedule_expr="0 * * * *", timezone="UTC"
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    db.execute("UPDATE tasks SET next_run_at = %s WHERE id = %s", (hour, hourly["id"]))
    db.execute("UPDATE tasks SET tzdata_version = %s", (OLD,))

    assert _retime(db_url) == [0]
    assert _task(db, snoozed["id"]) == (moved_to, tzdata_version())
    assert _task(db, hourly["id"]) == (hour, tzdata_version())
    assert db.execute(
        "SELECT count(*) FROM occurrences WHERE decision = 'recomputed'"
    ).fetchone() == (0,)


def test_an_earlier_fire_time_that_leaves_the_stored_one_standing_records_nothing(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    """Stored at its second coming fire time, as if new rules had put one before it: the
    stored time is still a fire time (queued in its turn, and recorded then), so moving to
    the first records nothing that would stand in its way."""
    task = _create(
        client, writer_token, schedule_kind="cron", schedule_expr="0 9,10 * * *", timezone="UTC"
    )
    schedule = parse_schedule("cron", "0 9,10 * * *", "UTC", created_at=datetime.now(UTC))
    first, second = schedule.upcoming(datetime.now(UTC), 2)
    db.execute(
        "UPDATE tasks SET next_run_at = %s, tzdata_version = %s WHERE id = %s",
        (second, OLD, task["id"]),
    )
    assert _retime(db_url) == [1]
    assert _task(db, task["id"]) == (first, tzdata_version())
    assert _recorded(db, task["id"]) == []


def test_an_edit_that_keeps_the_schedule_keeps_the_release_that_computed_the_time(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task = _create(
        client,
        writer_token,
        schedule_kind="cron",
        schedule_expr="0 9 * * *",
        timezone="America/Havana",
    )
    right, _ = _task(db, task["id"])
    db.execute(
        "UPDATE tasks SET next_run_at = next_run_at + interval '1 hour', tzdata_version = %s "
        "WHERE id = %s",
        (OLD, task["id"]),
    )
    resp = client.put(f"/tasks/{task['id']}", json={"title": "renamed"}, headers=auth(writer_token))
    assert resp.status_code == 200, resp.text
    # Still the old time, and still known as the old release's: the scheduler fixes it.
    assert _task(db, task["id"]) == (right + timedelta(hours=1), OLD)
    assert _retime(db_url) == [1]
    assert _task(db, task["id"]) == (right, tzdata_version())


def test_the_look_for_stale_times_reads_the_release_index(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    """Every scheduler looks every minute: among many tasks, none stale, it must read the
    index on the release, not the table."""
    task = _create(client, writer_token)
    db.execute(
        "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
        "next_run_at, tzdata_version) "
        "SELECT created_by, 'copy', schedule_kind, schedule_expr, timezone, "
        "next_run_at + i * interval '1 minute', tzdata_version "
        "FROM tasks, generate_series(1, 20000) i WHERE id = %s",
        (task["id"],),
    )
    db.execute("ANALYZE tasks")
    row = db.execute(
        "EXPLAIN (FORMAT JSON) " + QUERIES["task_lock_stale_zones"],
        {"version": tzdata_version(), "limit": 1000},
    ).fetchone()
    assert row is not None
    scans = [n for n in plan_nodes(row[0][0]["Plan"]) if n.get("Relation Name") == "tasks"]
    assert scans, row
    assert all(n.get("Index Name") == "tasks_tzdata_idx" for n in scans), scans
