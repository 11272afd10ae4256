"""Listing runs: an agent's own, newest first, across its tasks; the live ones from their work."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from pao.db import connect
from pao.models import Run
from pao.sql import QUERIES
from pao.store.runs import OWNED_SCAN, list_runs
from tests.helpers import SEED_TASK, auth, in_table, plan_nodes, queue_runs

BUSY_RUNS = 20_000


def _agent_id(db: psycopg.Connection[Any], name: str) -> str:
    row = db.execute("SELECT id::text FROM agents WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


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
        "work_state": status,
        "after_queued": None,
        "after_id": None,
        "limit": limit,
    }
    row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES[statement], params).fetchone()
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    scans = [n for n in plan_nodes(doc[0]["Plan"]) if in_table(n.get("Relation Name"), "runs")]
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
        queue_runs(db, task_id, 5 + i)
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


def _pages(client: TestClient, token: str, limit: int, **params: str) -> list[str]:
    """Every page of GET /runs, followed to the end."""
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": str(limit), **params, **({"cursor": cursor} if cursor else {})}
        page = client.get("/runs", params=query, headers=auth(token)).json()
        seen += [run["id"] for run in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_an_agents_few_runs_among_anothers_long_history_are_found_task_by_task(
    client: TestClient,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
    db_url: str,
) -> None:
    """Alice's six runs are older than Bob's 20,000: her pages read her tasks' runs, not his."""
    alice = make_token("tasks:write", "runs:read", name="alice")
    bob = make_token("tasks:write", name="bob")
    mine = [
        client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()["id"] for _ in range(2)
    ]
    for task_id in mine:
        queue_runs(db, task_id, 3)
    db.execute("UPDATE runs SET queued_at = queued_at - interval '1 day'")
    busy = client.post("/tasks", json=SEED_TASK, headers=auth(bob)).json()["id"]
    queue_runs(db, busy, BUSY_RUNS)
    # Two of hers, and many of his, were cancelled: a status filter finds hers alone.
    db.execute(
        "UPDATE runs SET status = 'cancelled', finished_at = now() WHERE id IN "
        "(SELECT id FROM runs WHERE task_id = %s ORDER BY queued_at LIMIT 2) "
        "OR (task_id = %s AND random() < 0.5)",
        (mine[1], busy),
    )
    db.execute("ANALYZE runs, tasks")

    def truth(status: str | None = None) -> list[str]:
        return [
            str(r[0])
            for r in db.execute(
                "SELECT id FROM runs WHERE task_id = ANY(%s::uuid[]) "
                "AND (%s::text IS NULL OR status = %s) ORDER BY queued_at DESC, id DESC",
                (mine, status, status),
            )
        ]

    assert len(truth()) == 6
    assert len(truth("cancelled")) == 2
    for limit in (1, 4, 50):
        assert _pages(client, alice, limit) == truth()
        assert _pages(client, alice, limit, status="cancelled") == truth("cancelled")
    owner = _agent_id(db, "alice")
    # Her first page, task by task, reads her runs (at most a page per task), none of Bob's.
    assert _runs_read(db, owner, 51, statement="run_list_owned") == 6
    # The look among the newest runs first is bounded by its window.
    assert _runs_read(db, owner, 51, statement="run_list_owned_recent") == OWNED_SCAN
    # And the listing takes those two ways, not a walk through Bob's history.
    listed, read = asyncio.run(_list_counting_reads(db_url, uuid.UUID(owner), 50))
    assert [str(run.id) for run in listed] == truth()
    # The window, counted once more (on the index alone once vacuumed), and her six runs.
    assert read <= 2 * OWNED_SCAN + 6 + 10


def test_pages_are_whole_however_the_owners_runs_are_found(
    client: TestClient,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    """Three agents' runs interleaved through one history, ten to a timestamp: Alice's 500
    over 50 tasks (walked on through the history once the newest runs hold too few of them),
    Carol's 5 over 2 tasks (task by task), Bob's 20,000 around them. Every page is whole."""
    alice = make_token("tasks:write", "runs:read", name="alice")
    carol = make_token("tasks:write", "runs:read", name="carol")
    bob = make_token("tasks:write", name="bob")
    busy = client.post("/tasks", json=SEED_TASK, headers=auth(bob)).json()["id"]
    hers = {
        name: db.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone) "
            "SELECT %s, 'interleaved', 'event', 'x', 'UTC' FROM generate_series(1, %s) "
            "RETURNING id::text",
            (_agent_id(db, name), count),
        ).fetchall()
        for name, count in (("alice", 50), ("carol", 2))
    }

    def runs(tasks: list[str], count: int, every: int) -> None:
        """`count` runs over `tasks` in turn, the i-th at the (i * every)-th place in history."""
        db.execute(
            "WITH w AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason, run_id) "
            "SELECT (%s::uuid[])[1 + i %% cardinality(%s::uuid[])], "
            "date_trunc('second', now()) - (i * %s / 10) * interval '1 second' "
            "+ i * interval '1 microsecond', now(), 'run_now', pao_uuid_v7() "
            "FROM generate_series(1, %s) i RETURNING id, task_id, scheduled_for, run_id) "
            "INSERT INTO runs (id, due_work_id, task_id, scheduled_for, queued_at) "
            "SELECT run_id, id, task_id, scheduled_for, date_trunc('second', scheduled_for) "
            "FROM w",
            (tasks, tasks, every, count),
        )

    runs([busy], BUSY_RUNS, 1)
    runs([t for (t,) in hers["alice"]], 500, 40)
    runs([t for (t,) in hers["carol"]], 5, 3000)
    db.execute("ANALYZE runs, tasks")
    ties = db.execute(
        "SELECT count(*) FROM (SELECT queued_at FROM runs GROUP BY 1 HAVING count(*) > 1) t"
    ).fetchone()
    assert ties is not None
    assert ties[0] > 1000

    for name, token in (("alice", alice), ("carol", carol)):
        tasks = [t for (t,) in hers[name]]
        truth = [
            str(r[0])
            for r in db.execute(
                "SELECT id FROM runs WHERE task_id = ANY(%s::uuid[]) "
                "ORDER BY queued_at DESC, id DESC",
                (tasks,),
            )
        ]
        assert len(truth) == {"alice": 500, "carol": 5}[name]
        for limit in (2, 20, 50):
            assert _pages(client, token, limit) == truth, (name, limit)


def test_an_agent_with_many_tasks_finds_its_page_among_the_newest_runs(
    client: TestClient,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
    db_url: str,
) -> None:
    """Task by task, 60 tasks of two runs each would read 120 runs for a page of 50; the
    newest runs, all hers (Bob's 20,000 are older), hold the page at once."""
    alice = make_token("tasks:write", "runs:read", name="alice")
    bob = make_token("tasks:write", name="bob")
    busy = client.post("/tasks", json=SEED_TASK, headers=auth(bob)).json()["id"]
    queue_runs(db, busy, BUSY_RUNS)
    db.execute("UPDATE runs SET queued_at = queued_at - interval '1 day'")
    mine = [
        client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()["id"] for _ in range(60)
    ]
    for task_id in mine:
        queue_runs(db, task_id, 2)
    db.execute("ANALYZE runs, tasks")
    truth = [
        str(r[0])
        for r in db.execute(
            "SELECT id FROM runs WHERE task_id = ANY(%s::uuid[]) ORDER BY queued_at DESC, id DESC",
            (mine,),
        )
    ]
    assert _pages(client, alice, 50) == truth
    listed, read = asyncio.run(_list_counting_reads(db_url, uuid.UUID(_agent_id(db, "alice")), 50))
    assert [str(run.id) for run in listed] == truth[:50]
    assert read <= 50 + 1  # a page (the counter takes in one row more); task by task, 121


async def _list_counting_reads(url: str, owner: uuid.UUID, limit: int) -> tuple[list[Run], int]:
    """A page as the API lists it, and the rows of `runs` its statements read."""
    conn = await connect(url)
    try:
        async with conn.transaction():
            listed = await list_runs(conn, owner=owner, limit=limit, after=None)
            cur = await conn.execute(
                "SELECT COALESCE(sum(COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)), 0) "
                "AS n FROM pg_stat_xact_user_tables "
                "WHERE relid IN (SELECT relid FROM pg_partition_tree('runs'))"
            )
            row = await cur.fetchone()
            assert row is not None
            return listed, int(row["n"])
    finally:
        await conn.close()


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
    queue_runs(db, task_id, BUSY_RUNS + 5)
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
