"""A rule that is costly to expand is answered fast, with a 422 naming schedule_expr."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao import db as pao_db
from pao.errors import InvalidInput
from pao.schedule import Budget, parse_schedule
from pao.settings import Settings
from scheduler.service import Scheduler
from tests.helpers import SEED_TASK, auth

# 29 February on a Monday, looked for minute by minute: three times in the next 100 years.
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
HOSTILE = "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR=0;BYMINUTE=0"


def _refused_on_schedule_expr(resp: Any) -> str:
    assert resp.status_code == 422, resp.text
    (error,) = resp.json()["errors"]
    assert error["field"] == "schedule_expr"
    return str(error["message"])


def test_hostile_preview_is_refused_fast(client: TestClient, make_token: Any) -> None:
    reader = make_token("tasks:read", name="reader")
    body = {"schedule_kind": "rrule", "schedule_expr": HOSTILE, "timezone": "UTC", "count": 100}
    resp = client.post("/tasks/preview", json=body, headers=auth(reader))
    message = _refused_on_schedule_expr(resp)
    assert "search" in message  # its budget or its horizon, whichever ends it first
    # What bounds it is a count of candidates, one budget for the whole preview.
    budget = Budget()
    schedule = parse_schedule("rrule", HOSTILE, "UTC", created_at=CREATED)
    with pytest.raises(InvalidInput):
        schedule.preview(CREATED, 100, budget=budget)
    assert budget.exhausted or budget.horizon_reached
    assert budget.spent <= budget.limit + 1
    fewer = client.post("/tasks/preview", json={**body, "count": 3}, headers=auth(reader))
    assert fewer.status_code == 200, fewer.text
    assert [item["at"][:10] for item in fewer.json()["items"]] == [
        "2044-02-29",
        "2072-02-29",
        "2112-02-29",
    ]


def test_occurrences_of_a_rare_rule_say_why_there_are_fewer(
    client: TestClient, writer_token: str
) -> None:
    task = {**SEED_TASK, "schedule_kind": "rrule", "schedule_expr": HOSTILE, "timezone": "UTC"}
    created = client.post("/tasks", json=task, headers=auth(writer_token))
    assert created.status_code == 201, created.text
    assert created.json()["next_run_at"].startswith("2044-02-29")
    url = f"/tasks/{created.json()['id']}/occurrences"
    resp = client.get(url, params={"count": 10}, headers=auth(writer_token))
    assert "search" in _refused_on_schedule_expr(resp)
    assert client.get(url, params={"count": 3}, headers=auth(writer_token)).status_code == 200


def test_scheduler_stops_a_costly_stored_rule_without_stalling(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    """A rule stored before searches had a budget (here one whose 100 occurrences span
    2,800 years) costs one bounded search on a thread, then stops firing; the loop keeps
    running meanwhile and the other tasks of the batch are queued."""
    costly = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()["id"]
    plain = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()["id"]
    due = datetime.now(UTC) - timedelta(seconds=1)
    db.execute(
        "UPDATE tasks SET schedule_kind = 'rrule', schedule_expr = %s, timezone = 'UTC' "
        "WHERE id = %s",
        (HOSTILE + ";COUNT=100", costly),
    )
    db.execute("UPDATE tasks SET next_run_at = %s WHERE id IN (%s, %s)", (due, costly, plain))

    async def go() -> float:
        pool = pao_db.make_pool(db_url, min_size=1, max_size=2)
        await pool.open(wait=True)
        longest = 0.0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal longest
            loop = asyncio.get_running_loop()
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.005)
                longest = max(longest, loop.time() - before)

        watcher = asyncio.create_task(watch())
        try:
            await Scheduler(Settings(), pool).materialise()
        finally:
            done.set()
            await watcher
            await pool.close()
        return longest

    longest = asyncio.run(go())
    assert longest < 0.3, f"the event loop was held for {longest:.2f} s"
    row = db.execute("SELECT status, next_run_at FROM tasks WHERE id = %s", (costly,)).fetchone()
    assert row == ("active", None)
    queued = db.execute("SELECT count(*) FROM due_work WHERE task_id = %s", (plain,)).fetchone()
    assert queued == (1,)
