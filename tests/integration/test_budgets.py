"""Cost and budgets against real PostgreSQL: what runs cost, budget_per_run, an agent's
budgets and run rate (admission, 429s, decisions), usage, and what an agent cannot do to
its own limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.costs import windows
from pao.db import connect
from pao.domain import budgets
from pao.settings import Settings
from pao.zones import get_zone
from scheduler.materialise import materialise_batch
from tests.background import worker
from tests.helpers import auth, create_task, run_now, until

PAID = {"id": "paid", "uses": "log", "with": {"message": "paid"}}
TYPE = "budget.work"


@pytest.fixture
def settings() -> Settings:
    """Every call of the built-in `log` tool costs 1 here."""
    return Settings(pool_min_size=1, pool_max_size=4, tool_costs=(("log", Decimal(1)),))


@pytest.fixture
def writer_id(db: psycopg.Connection[Any], writer_token: str) -> str:
    row = db.execute("SELECT id FROM agents WHERE name = 'writer'").fetchone()
    assert row is not None
    return str(row[0])


def limit(client: TestClient, admin: str, agent_id: str, **fields: Any) -> dict[str, Any]:
    resp = client.put(f"/agents/{agent_id}", json=fields, headers=auth(admin))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _final(client: TestClient, token: str, run_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/runs/{run_id}", headers=auth(token)).json()
        return run if run["status"] not in ("queued", "running") else None

    found: dict[str, Any] = until(ended, f"run {run_id} to end", 20)
    return found


# What runs cost ---------------------------------------------------------------------------


def test_a_run_costs_the_sum_of_its_paid_steps(
    client: TestClient, writer_token: str, writer_id: str, db_url: str
) -> None:
    free = {"id": "free", "uses": "sleep", "with": {"seconds": 0}}
    task_id = create_task(client, writer_token, PAID, free, {**PAID, "id": "again"})
    task = client.get(f"/tasks/{task_id}", headers=auth(writer_token)).json()
    assert task["cost_estimate"] == "2"
    assert task["budget_per_run"] is None
    with worker(db_url, tool_costs=(("log", Decimal("0.75")),)):
        run = _final(client, writer_token, run_now(client, writer_token, task_id))
    assert run["status"] == "succeeded", run
    assert run["cost"] == "1.5"
    assert [s.get("cost") for s in run["steps"]] == ["0.75", None, "0.75"]
    usage = client.get(f"/agents/{writer_id}/usage", headers=auth(writer_token)).json()
    assert usage["today"]["cost"] == "1.5"
    assert usage["this_month"]["cost"] == "1.5"
    assert usage["today"]["runs"] == 1
    assert usage["today"]["budget"] is None
    assert usage["timezone"] == "Europe/Chisinau"
    assert client.get("/agents/me/usage", headers=auth(writer_token)).json() == usage


# budget_per_run ---------------------------------------------------------------------------


def test_budget_per_run_below_the_declared_costs_is_refused_naming_the_steps(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    body = {
        "title": "t",
        "schedule_kind": "event",
        "schedule_expr": "x.y",
        "budget_per_run": 1.5,
        "payload": {"pipeline": [PAID, {**PAID, "id": "second"}]},
    }
    resp = client.post("/tasks", json=body, headers=auth(writer_token))
    assert resp.status_code == 422, resp.text
    [error] = resp.json()["errors"]
    assert error["field"] == "budget_per_run"
    assert "paid (1)" in error["message"]
    assert "second (1)" in error["message"]
    assert db.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
    # Within it, created; an edit that lowers it below the steps' costs is refused too.
    made = client.post("/tasks", json={**body, "budget_per_run": 2}, headers=auth(writer_token))
    assert made.status_code == 201, made.text
    task_id = made.json()["id"]
    edit = client.put(f"/tasks/{task_id}", json={"budget_per_run": 1}, headers=auth(writer_token))
    assert edit.status_code == 422
    assert edit.json()["errors"][0]["field"] == "budget_per_run"
    assert (
        client.get(f"/tasks/{task_id}", headers=auth(writer_token)).json()["budget_per_run"] == "2"
    )
    cleared = client.put(
        f"/tasks/{task_id}", json={"budget_per_run": None}, headers=auth(writer_token)
    )
    assert cleared.status_code == 200
    assert cleared.json()["budget_per_run"] is None
    for bad in (-1, "1", float("1e10"), 0.1234567):
        resp = client.put(
            f"/tasks/{task_id}", json={"budget_per_run": bad}, headers=auth(writer_token)
        )
        assert resp.status_code == 422, (bad, resp.text)


def test_a_step_that_would_pass_budget_per_run_fails_the_run_before_it_starts(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    # Declared 1 a call when the task was written; the worker's operator has since raised it
    # to 1.25: the second step would take the run past its budget of 2.
    task_id = create_task(
        client, writer_token, PAID, {**PAID, "id": "second"}, budget_per_run=2, max_retries=3
    )
    with worker(db_url, tool_costs=(("log", Decimal("1.25")),)):
        run = _final(client, writer_token, run_now(client, writer_token, task_id))
    assert run["status"] == "failed", run
    assert run["error"].startswith("budget_exceeded: step second costs 1.25"), run["error"]
    assert run["cost"] == "1.25"
    assert [s["id"] for s in run["steps"]] == ["paid"]  # the second never started
    logged = db.execute("SELECT step_id FROM run_logs ORDER BY id").fetchall()
    assert logged == [("paid",)]
    # A budget refusal is final: no retry was queued.
    assert db.execute("SELECT state, attempt FROM due_work").fetchall() == [("failed", 1)]


# An agent's budgets and run rate ------------------------------------------------------------


def test_run_now_is_refused_with_429_until_an_admin_raises_the_budget(
    client: TestClient, writer_token: str, admin_token: str, writer_id: str
) -> None:
    task_id = create_task(client, writer_token, PAID)
    agent = limit(client, admin_token, writer_id, budget_per_day=1, timezone="America/New_York")
    assert agent["budget_per_day"] == "1"
    assert agent["timezone"] == "America/New_York"
    run_now(client, writer_token, task_id)  # reserves its estimate: the whole day's budget
    before = datetime.now(UTC)
    refused = client.post(f"/tasks/{task_id}/run_now", headers=auth(writer_token))
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["type"] == "urn:pao:problem:budget-exceeded"
    assert "budget_per_day of 1" in body["detail"]
    assert "America/New_York" in body["detail"]
    # Retry-After: the seconds to local midnight in the agent's zone.
    day = windows(before, get_zone("America/New_York")).day
    assert abs(int(refused.headers["Retry-After"]) - day.seconds_left(before)) <= 2
    usage = client.get(f"/agents/{writer_id}/usage", headers=auth(writer_token)).json()
    assert usage["today"]["budget"] == "1"
    assert usage["today"]["reserved"] == "1"
    assert usage["today"]["remaining"] == "0"
    assert usage["today"]["starts_at"] == day.starts_at.isoformat().replace("+00:00", "Z")
    # Raised: work flows again at once.
    limit(client, admin_token, writer_id, budget_per_day=5)
    assert client.post(f"/tasks/{task_id}/run_now", headers=auth(writer_token)).status_code == 202
    # Removed: no budget at all.
    assert limit(client, admin_token, writer_id, budget_per_day=None)["budget_per_day"] is None


def test_run_now_loops_get_429_once_the_run_rate_is_reached(
    client: TestClient, writer_token: str, admin_token: str, writer_id: str
) -> None:
    task_id = create_task(
        client, writer_token, {"id": "f", "uses": "sleep", "with": {"seconds": 0}}
    )
    limit(client, admin_token, writer_id, max_runs_per_hour=3)
    answers = [
        client.post(f"/tasks/{task_id}/run_now", headers=auth(writer_token)) for _ in range(10)
    ]
    assert [a.status_code for a in answers] == [202] * 3 + [429] * 7
    last = answers[-1]
    assert last.json()["type"] == "urn:pao:problem:run-rate-limited"
    assert 1 <= int(last.headers["Retry-After"]) <= 3600
    usage = client.get(f"/agents/{writer_id}/usage", headers=auth(writer_token)).json()
    assert usage["this_hour"] == {**usage["this_hour"], "max_runs": 3, "runs_started": 3}


def test_events_over_budget_answer_429_alone_and_record_over_budget_when_shared(
    client: TestClient,
    writer_token: str,
    admin_token: str,
    writer_id: str,
    db: psycopg.Connection[Any],
) -> None:
    fields = {"schedule_kind": "event", "schedule_expr": "bill.*"}
    task_id = create_task(client, writer_token, PAID, **fields)
    limit(client, admin_token, writer_id, budget_per_day=0)
    # The writer's own event fires only its own task, which its budget refuses: a 429 and
    # nothing kept.
    refused = client.post("/events", json={"type": "bill.due"}, headers=auth(writer_token))
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers
    assert refused.json()["type"] == "urn:pao:problem:budget-exceeded"
    assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)
    # An admin's broadcast reaches it among others: accepted, and the task's occurrence says
    # why it did not fire.
    accepted = client.post(
        "/events", json={"type": "bill.due", "audience": "*"}, headers=auth(admin_token)
    )
    assert accepted.status_code == 202, accepted.text
    rows = db.execute(
        "SELECT decision, detail FROM occurrences WHERE task_id = %s", (task_id,)
    ).fetchall()
    assert [r[0] for r in rows] == ["over_budget"]
    assert "budget_per_day of 0" in rows[0][1]


def test_catch_up_of_100_occurrences_with_a_budget_for_10(
    client: TestClient,
    writer_token: str,
    admin_token: str,
    writer_id: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    task_id = create_task(
        client,
        writer_token,
        PAID,
        schedule_kind="cron",
        schedule_expr="* * * * *",
        misfire_policy="all",
        misfire_grace_seconds=86_400,
    )
    limit(client, admin_token, writer_id, budget_per_day=10, budget_per_month=1000)
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    minute = now.replace(second=0)
    db.execute(
        "UPDATE tasks SET next_run_at = %s WHERE id = %s", (minute - timedelta(minutes=99), task_id)
    )

    async def materialise() -> tuple[int, int]:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                return await materialise_batch(conn, now=now, horizon=now, limit=10)
        finally:
            await conn.close()

    assert asyncio.run(materialise()) == (1, 10)
    decisions = dict(
        db.execute(
            "SELECT decision, count(*) FROM occurrences WHERE task_id = %s GROUP BY 1",
            (task_id,),
        ).fetchall()
    )
    assert decisions == {"queued": 10, "over_budget": 90}
    # The earliest ten were admitted, each holding its estimated cost.
    queued = db.execute(
        "SELECT min(scheduled_for), max(scheduled_for), sum(reserved) FROM due_work"
    ).fetchone()
    assert queued == (minute - timedelta(minutes=99), minute - timedelta(minutes=90), 10)


def test_a_new_local_day_opens_the_budget_again_even_on_a_dst_change_day(
    client: TestClient,
    writer_token: str,
    admin_token: str,
    writer_id: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    limit(client, admin_token, writer_id, budget_per_day=1, timezone="America/New_York")
    run_id = run_now(client, writer_token, create_task(client, writer_token, PAID))
    owner = uuid.UUID(writer_id)

    async def charge(at: datetime) -> Any:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                c = budgets.Charge(owner, uuid.UUID(run_id), "paid", Decimal(1), None)
                return await budgets.charge(conn, c, now=at, default_timezone="UTC")
        finally:
            await conn.close()

    # 2026-03-08 is the day New York springs forward: 23 hours, 05:00Z to 04:00Z next day.
    last_of_7th = datetime(2026, 3, 8, 4, 59, 30, tzinfo=UTC)  # 23:59:30 EST
    first_of_8th = datetime(2026, 3, 8, 5, 0, 30, tzinfo=UTC)  # 00:00:30 EST
    last_of_8th = datetime(2026, 3, 9, 3, 59, 30, tzinfo=UTC)  # 23:59:30 EDT
    first_of_9th = datetime(2026, 3, 9, 4, 0, 30, tzinfo=UTC)  # 00:00:30 EDT
    assert asyncio.run(charge(last_of_7th)) == Decimal(1)
    refused = asyncio.run(charge(last_of_7th))
    assert isinstance(refused, budgets.Refusal)
    assert refused.retry_after == 30
    assert asyncio.run(charge(first_of_8th)) == Decimal(2)
    refused = asyncio.run(charge(last_of_8th))
    assert isinstance(refused, budgets.Refusal)
    assert refused.retry_after == 30
    assert asyncio.run(charge(first_of_9th)) == Decimal(3)
    days = db.execute(
        "SELECT starts_at, ends_at, spent FROM agent_spending WHERE period = 'day' "
        "ORDER BY starts_at"
    ).fetchall()
    assert [(s.astimezone(UTC), e - s, spent) for s, e, spent in days] == [
        (datetime(2026, 3, 7, 5, tzinfo=UTC), timedelta(hours=24), 1),
        (datetime(2026, 3, 8, 5, tzinfo=UTC), timedelta(hours=23), 1),
        (datetime(2026, 3, 9, 4, tzinfo=UTC), timedelta(hours=24), 1),
    ]


# What an agent cannot do ----------------------------------------------------------------------


def test_an_agent_cannot_set_its_own_budgets_or_read_anothers_usage(
    client: TestClient,
    writer_token: str,
    admin_token: str,
    writer_id: str,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    limit(client, admin_token, writer_id, budget_per_day=1)
    for fields in ({"budget_per_day": 1000}, {"budget_per_day": None}, {"max_runs_per_hour": 9}):
        resp = client.put(f"/agents/{writer_id}", json=fields, headers=auth(writer_token))
        assert resp.status_code == 403, resp.text
    assert db.execute(
        "SELECT budget_per_day, max_runs_per_hour FROM agents WHERE id = %s", (writer_id,)
    ).fetchone() == (1, None)
    other = make_token("runs:read", name="other")
    assert client.get(f"/agents/{writer_id}/usage", headers=auth(other)).status_code == 404
    assert client.get(f"/agents/{uuid.uuid4()}/usage", headers=auth(admin_token)).status_code == 404
    assert client.get(f"/agents/{writer_id}/usage", headers=auth(admin_token)).status_code == 200
    # Nothing negative, non-finite, huge or over-precise is a budget.
    for bad in (-1, "5", 1e10, 0.0000001, True):
        resp = client.put(
            f"/agents/{writer_id}", json={"budget_per_day": bad}, headers=auth(admin_token)
        )
        assert resp.status_code == 422, (bad, resp.text)
    resp = client.put(
        f"/agents/{writer_id}",
        content=b'{"budget_per_month": NaN}',
        headers={**auth(admin_token), "Content-Type": "application/json"},
    )
    assert resp.status_code == 422, resp.text
    bad_zone = client.put(
        f"/agents/{writer_id}", json={"timezone": "Mars/Olympus"}, headers=auth(admin_token)
    )
    assert bad_zone.status_code == 422
    assert bad_zone.json()["errors"][0]["field"] == "timezone"


@pytest.fixture
def paid_type(client: TestClient, admin_token: str) -> str:
    made = client.post(
        "/task-types",
        json={
            "name": TYPE,
            "parameters_schema": {"type": "object"},
            "cost_per_call": 1,
            "lease_seconds": 60,
        },
        headers=auth(admin_token),
    )
    assert made.status_code == 201, made.text
    return TYPE


def test_a_remote_steps_reported_cost_replaces_its_declared_one_and_bad_costs_change_nothing(
    client: TestClient,
    writer_token: str,
    writer_id: str,
    paid_type: str,
    make_token: Callable[..., str],
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    claimer = make_token("work:claim", name="remote")
    task_id = create_task(client, writer_token, {"id": "far", "uses": paid_type, "with": {}})
    assert (
        client.get(f"/tasks/{task_id}", headers=auth(writer_token)).json()["cost_estimate"] == "1"
    )
    with worker(db_url):
        run_id = run_now(client, writer_token, task_id)

        def claimed() -> list[dict[str, Any]]:
            resp = client.post(f"/task-types/{paid_type}/claim", json={}, headers=auth(claimer))
            items: list[dict[str, Any]] = resp.json()["items"]
            return items

        [item] = until(claimed, "the remote step to be offered")
        # Charged its declared cost when offered.
        assert client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()["cost"] == "1"
        url = f"/claims/{item['claim_id']}/complete"
        for raw in ("-1", "NaN", "Infinity", "-Infinity", "1e10", "0.1234567", '"2"', "true"):
            resp = client.post(
                url,
                content=b'{"output": {}, "cost": ' + raw.encode() + b"}",
                headers={**auth(claimer), "Content-Type": "application/json"},
            )
            assert resp.status_code == 422, (raw, resp.text)
        assert db.execute("SELECT state, cost FROM remote_steps").fetchone() == ("claimed", None)
        assert client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()["cost"] == "1"
        done = client.post(url, json={"output": {"ok": True}, "cost": 2.5}, headers=auth(claimer))
        assert done.status_code == 200, done.text
        run = _final(client, writer_token, run_id)
    assert run["status"] == "succeeded", run
    assert run["cost"] == "2.5"
    assert run["steps"][0]["cost"] == "2.5"
    usage = client.get(f"/agents/{writer_id}/usage", headers=auth(writer_token)).json()
    assert usage["today"]["cost"] == "2.5"
