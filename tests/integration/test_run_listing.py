"""An agent's runs: listed by owner from an index of their own, and moved with their task."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from pao.db import connect
from pao.models import Run
from pao.sql import QUERIES
from pao.store.occurrences import QueueRequest, queue
from tests.helpers import SEED_TASK, auth

BUSY_RUNS = 20_000


def _agent_id(db: psycopg.Connection[Any], name: str) -> str:
    row = db.execute("SELECT id::text FROM agents WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def _queue_runs(db: psycopg.Connection[Any], task_id: str, count: int) -> None:
    """`count` queued occurrences of the task with their runs, as run_now makes them."""
    db.execute(
        "WITH w AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason) "
        "SELECT %s, now() - i * interval '1 second', now(), 'run_now' "
        "FROM generate_series(1, %s) i RETURNING id, task_id, scheduled_for) "
        "INSERT INTO runs (due_work_id, task_id, scheduled_for, queued_at) "
        "SELECT id, task_id, scheduled_for, scheduled_for FROM w",
        (task_id, count),
    )


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _runs_read(
    db: psycopg.Connection[Any],
    owner: str | None,
    limit: int,
    *,
    statement: str = "run_list_owned",
    status: str | None = None,
) -> int:
    """Rows a first page took from `runs`, by EXPLAIN ANALYZE of the statement."""
    params = {
        "owner": owner,
        "task_id": None,
        "status": status,
        "after_queued": None,
        "after_id": None,
        "limit": limit,
    }
    row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES[statement], params).fetchone()
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    scans = [n for n in _nodes(doc[0]["Plan"]) if n.get("Relation Name") == "runs"]
    assert scans
    return sum(int(n["Actual Rows"]) * int(n["Actual Loops"]) for n in scans)


def test_an_agents_page_of_runs_costs_a_page_among_long_history(
    client: TestClient,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    busy, quiet = make_token("tasks:write", name="busy"), make_token("tasks:write", name="quiet")
    busy_task = client.post("/tasks", json=SEED_TASK, headers=auth(busy)).json()["id"]
    quiet_task = client.post("/tasks", json=SEED_TASK, headers=auth(quiet)).json()["id"]
    _queue_runs(db, busy_task, BUSY_RUNS)
    _queue_runs(db, quiet_task, 3)
    db.execute("ANALYZE runs")
    # The quiet agent's three runs are the oldest of all: before runs_owner_idx, finding
    # them meant reading every one of the busy agent's runs first.
    db.execute(
        "UPDATE runs SET queued_at = queued_at - interval '1 day' WHERE task_id = %s", (quiet_task,)
    )
    assert _runs_read(db, _agent_id(db, "quiet"), 51) == 3
    assert _runs_read(db, _agent_id(db, "busy"), 51) == 51


def test_an_agents_pages_hold_all_its_runs_newest_first(
    client: TestClient,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    alice = make_token("tasks:read", "tasks:write", "runs:read", name="alice")
    bob = make_token("tasks:write", name="bob")
    mine = [
        client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()["id"] for _ in range(3)
    ]
    other = client.post("/tasks", json=SEED_TASK, headers=auth(bob)).json()["id"]
    for i, task_id in enumerate([*mine, other]):
        _queue_runs(db, task_id, 5 + i)
    expected = [
        str(r[0])
        for r in db.execute(
            "SELECT id FROM runs WHERE task_id = ANY(%s::uuid[]) ORDER BY queued_at DESC, id DESC",
            (mine,),
        )
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = client.get("/runs", params=params, headers=auth(alice)).json()
        seen += [run["id"] for run in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert len(seen) == 5 + 6 + 7


def test_a_task_that_changes_hands_takes_its_runs_along(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
) -> None:
    alice = make_token("tasks:read", "tasks:write", "runs:read", name="alice")
    bob = make_token("tasks:read", "tasks:write", "runs:read", name="bob")
    task = client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()
    run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(alice)).json()
    assert [r["id"] for r in client.get("/runs", headers=auth(alice)).json()["items"]] == [
        run["id"]
    ]

    moved = client.put(
        f"/tasks/{task['id']}", json={"created_by": _agent_id(db, "bob")}, headers=auth(admin_token)
    )
    assert moved.status_code == 200
    assert client.get("/runs", headers=auth(alice)).json()["items"] == []
    assert client.get(f"/runs/{run['id']}", headers=auth(alice)).status_code == 404
    assert [r["id"] for r in client.get("/runs", headers=auth(bob)).json()["items"]] == [run["id"]]
    assert client.get(f"/runs/{run['id']}", headers=auth(bob)).status_code == 200


def test_a_run_inserted_without_its_owner_takes_its_tasks(
    client: TestClient, make_token: Callable[..., str], db: psycopg.Connection[Any]
) -> None:
    """As a process started before the owner was kept on runs inserts them."""
    alice = make_token("tasks:write", name="alice")
    task_id = client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()["id"]
    _queue_runs(db, task_id, 1)
    owner = db.execute(
        "SELECT created_by::text FROM runs WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert owner == (_agent_id(db, "alice"),)


def _listed(client: TestClient, token: str, **params: str) -> list[str]:
    page = client.get("/runs", params={"limit": "50", **params}, headers=auth(token)).json()
    return [run["id"] for run in page["items"]]


def test_queued_and_running_runs_are_found_without_reading_the_history(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
) -> None:
    alice = make_token("tasks:write", "runs:read", name="alice")
    task_id = client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()["id"]
    _queue_runs(db, task_id, BUSY_RUNS + 5)
    # All but the five newest ended long ago; of those five, the two oldest are running.
    db.execute(
        "WITH ended AS (UPDATE due_work SET state = 'succeeded', finished_at = now() "
        "WHERE id IN (SELECT due_work_id FROM runs ORDER BY queued_at LIMIT %s) RETURNING id) "
        "UPDATE runs SET status = 'succeeded', started_at = now(), finished_at = now() "
        "WHERE due_work_id IN (SELECT id FROM ended)",
        (BUSY_RUNS,),
    )
    db.execute(
        "WITH started AS (UPDATE due_work SET state = 'running', lease_owner = 'w', "
        "lease_expires_at = now() + interval '1 minute' WHERE id IN (SELECT due_work_id "
        "FROM runs WHERE status = 'queued' ORDER BY queued_at LIMIT 2) RETURNING id) "
        "UPDATE runs SET status = 'running', started_at = now() "
        "WHERE due_work_id IN (SELECT id FROM started)"
    )
    db.execute("ANALYZE due_work, runs")
    owner = _agent_id(db, "alice")
    for status, count in (("queued", 3), ("running", 2)):
        truth = [
            str(r[0])
            for r in db.execute(
                "SELECT id FROM runs WHERE status = %s ORDER BY queued_at DESC, id DESC", (status,)
            )
        ]
        assert len(truth) == count
        assert _listed(client, admin_token, status=status) == truth
        assert _listed(client, alice, status=status) == truth
        assert _listed(client, alice, status=status, task_id=task_id) == truth
        for who in (None, owner):
            read = _runs_read(db, who, 51, statement="run_list_live", status=status)
            assert read == count


def test_a_run_queued_while_its_task_changes_hands_goes_with_it(
    client: TestClient, make_token: Callable[..., str], db_url: str, db: psycopg.Connection[Any]
) -> None:
    alice = make_token("tasks:write", name="alice")
    make_token("tasks:write", name="bob")
    task_id = client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()["id"]
    queued: list[Run | None] = []

    def queue_one() -> None:
        async def go() -> Run | None:
            conn = await connect(db_url, autocommit=True)
            try:
                now = datetime.now(UTC)
                request = QueueRequest(uuid.UUID(task_id), now, now, 5, "run_now")
                return await queue(conn, request)
            finally:
                await conn.close()

        queued.append(asyncio.run(go()))

    with psycopg.connect(db_url) as mover:
        # What a PUT that gives the task to bob does, held open.
        mover.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
        bob = _agent_id(db, "bob")
        mover.execute("UPDATE tasks SET created_by = %s WHERE id = %s", (bob, task_id))
        mover.execute(QUERIES["run_set_owner"], {"task_id": task_id, "owner": bob})
        queuer = threading.Thread(target=queue_one)
        queuer.start()
        time.sleep(0.5)
        assert queuer.is_alive()  # it waits for the change
    queuer.join(10)
    [run] = queued
    assert run is not None
    owner = db.execute("SELECT created_by::text FROM runs WHERE id = %s", (run.id,)).fetchone()
    assert owner == (bob,)
