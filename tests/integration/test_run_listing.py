"""Listing runs: an agent's own, newest first, across its tasks; the live ones from their work."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from pao.sql import QUERIES
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
    statement: str,
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
