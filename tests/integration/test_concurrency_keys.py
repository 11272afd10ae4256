"""Concurrency keys: enforced in the claim itself, across workers, per agent."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.db import connect
from pao.store import work
from tests.background import worker
from tests.helpers import SEED_TASK, auth, snapshot, until


def _create(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    resp = client.post("/tasks", json={**SEED_TASK, **fields}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _run_now(client: TestClient, token: str, task: dict[str, Any], times: int = 1) -> None:
    for _ in range(times):
        resp = client.post(f"/tasks/{task['id']}/run_now", headers=auth(token))
        assert resp.status_code == 202, resp.text


def _napping(seconds: float) -> dict[str, Any]:
    return {"pipeline": [{"id": "nap", "uses": "sleep", "with": {"seconds": seconds}}]}


def _claim_race(url: str, claimers: int, batch: int) -> int:
    """`claimers` workers claim at once, each on its own connection; how many rows they got."""

    async def one(i: int) -> int:
        conn = await connect(url, autocommit=True)
        try:
            got = await work.claim(conn, worker_id=f"w{i}", limit=batch, lease_seconds=30)
            return len(got.claimed)
        finally:
            await conn.close()

    async def all_at_once() -> int:
        return sum(await asyncio.gather(*(one(i) for i in range(claimers))))

    return asyncio.run(all_at_once())


def _running_by_key(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute(
        "SELECT claim_key, count(*) FROM due_work WHERE state = 'running' GROUP BY claim_key"
    ).fetchall()
    return {str(key): int(n) for key, n in rows}


@pytest.mark.parametrize("limit", [1, 3])
def test_racing_claims_never_run_more_than_the_limit(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    limit: int,
) -> None:
    keyed = [
        _create(client, writer_token, concurrency_key="printer", concurrency_limit=limit)
        for _ in range(4)
    ]
    free = _create(client, writer_token)
    for task in keyed:
        _run_now(client, writer_token, task, times=5)
    _run_now(client, writer_token, free, times=6)
    for _ in range(5):  # rounds: each frees the key and races again
        claimed = _claim_race(db_url, claimers=12, batch=3)
        counts = _running_by_key(db)
        assert counts.get("None", 0) <= 6
        keys = {k: n for k, n in counts.items() if k != "None"}
        assert list(keys.values()) == [limit], counts
        assert claimed == sum(counts.values())
        db.execute(
            "UPDATE due_work SET state = 'succeeded', finished_at = now(), lease_owner = NULL, "
            "lease_expires_at = NULL WHERE state = 'running'"
        )
    # 20 keyed occurrences went `limit` at a time; the rest still wait their turn.
    waiting = db.execute(
        "SELECT count(*) FROM due_work WHERE state = 'queued' AND claim_key IS NOT NULL"
    ).fetchone()
    assert waiting == (20 - 5 * limit,)


def test_a_full_key_does_not_hold_up_other_work_or_wake_idle_workers(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    keyed = _create(client, writer_token, concurrency_key="k", priority=1)
    _run_now(client, writer_token, keyed, times=5)
    first = _claim_race(db_url, claimers=1, batch=1)
    assert first == 1
    # The four keyed rows wait ahead of everything by priority, yet unkeyed work is claimed.
    later = _create(client, writer_token, priority=9)
    _run_now(client, writer_token, later)
    assert _claim_race(db_url, claimers=1, batch=5) == 1
    counts = _running_by_key(db)
    assert counts.pop("None") == 1
    assert list(counts.values()) == [1]

    async def next_due() -> Any:
        conn = await connect(db_url)
        try:
            return await work.next_due(conn)
        finally:
            await conn.close()

    # An idle worker is told nothing is due, so it waits for a wake-up instead of spinning.
    assert asyncio.run(next_due()) is None


def test_the_same_key_of_two_agents_is_two_keys(
    client: TestClient, make_token: Any, db_url: str, db: psycopg.Connection[Any]
) -> None:
    alice = make_token("tasks:read", "tasks:write", "runs:read", name="alice")
    bob = make_token("tasks:read", "tasks:write", "runs:read", name="bob")
    for token in (alice, bob):
        _run_now(client, token, _create(client, token, concurrency_key="shared"), times=2)
    assert _claim_race(db_url, claimers=4, batch=4) == 2
    assert sorted(_running_by_key(db).values()) == [1, 1]


def test_a_limit_without_a_key_limits_the_task_alone(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    a = _create(client, writer_token, concurrency_limit=2)
    b = _create(client, writer_token, concurrency_limit=2)
    _run_now(client, writer_token, a, times=4)
    _run_now(client, writer_token, b, times=4)
    assert _claim_race(db_url, claimers=4, batch=8) == 4
    by_task = db.execute(
        "SELECT task_id, count(*) FROM due_work WHERE state = 'running' GROUP BY task_id"
    ).fetchall()
    assert sorted(n for _, n in by_task) == [2, 2]


def test_changing_the_key_reaches_queued_occurrences(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    task = _create(client, writer_token)
    _run_now(client, writer_token, task, times=3)
    resp = client.put(
        f"/tasks/{task['id']}",
        json={"concurrency_key": "one-at-a-time", "concurrency_limit": 2},
        headers=auth(writer_token),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["concurrency_limit"] == 2
    rows = db.execute("SELECT DISTINCT claim_key, claim_limit FROM due_work").fetchall()
    assert len(rows) == 1
    assert rows[0][1] == 2
    assert str(rows[0][0]).endswith("/one-at-a-time")
    resp = client.put(
        f"/tasks/{task['id']}",
        json={"concurrency_key": None, "concurrency_limit": None},
        headers=auth(writer_token),
    )
    assert resp.status_code == 200, resp.text
    assert db.execute("SELECT DISTINCT claim_key, claim_limit FROM due_work").fetchall() == [
        (None, None)
    ]


@pytest.mark.parametrize("bad", [0, 1001, "2", 1.5, True])
def test_a_bad_limit_is_refused_and_changes_nothing(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], bad: object
) -> None:
    before = snapshot(db)
    resp = client.post(
        "/tasks", json={**SEED_TASK, "concurrency_limit": bad}, headers=auth(writer_token)
    )
    assert resp.status_code == 422, resp.text
    assert "concurrency_limit" in resp.text
    assert snapshot(db) == before


def test_workers_never_overlap_runs_of_one_key(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    tasks = [
        _create(client, writer_token, concurrency_key="modem", payload=_napping(0.2))
        for _ in range(3)
    ]
    for task in tasks:
        _run_now(client, writer_token, task, times=2)
    with worker(db_url, worker_concurrency=4), worker(db_url, worker_concurrency=4):
        until(
            lambda: (
                db.execute("SELECT count(*) FROM runs WHERE finished_at IS NULL").fetchone() == (0,)
            ),
            "every run to finish",
            20,
        )
    spans = db.execute(
        "SELECT started_at, finished_at, status FROM runs ORDER BY started_at"
    ).fetchall()
    assert [s[2] for s in spans] == ["succeeded"] * 6
    # Times are transaction starts, a hair early; an overlap would be a whole 200 ms nap.
    slack = timedelta(milliseconds=50)
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert end <= start + slack, spans
