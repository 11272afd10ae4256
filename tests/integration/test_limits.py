"""Rate limits, failed sign-in slowing and per-agent quotas, counted in PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from pao import tokens
from pao.db import connect
from pao.settings import Settings
from pao.store import rate_counters
from tests.helpers import SEED_TASK, auth, snapshot

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _client(db_url: str, settings: Settings, **kwargs: Any) -> TestClient:
    return TestClient(create_app(settings, database_url=db_url), **kwargs)


@pytest.fixture
def limited(db_url: str, settings: Settings) -> Iterator[TestClient]:
    with _client(db_url, replace(settings, rate_limit_per_minute=5)) as client:
        yield client


def test_every_signed_in_answer_shows_the_rate_limit(
    limited: TestClient, make_token: Callable[..., str]
) -> None:
    token = make_token("tasks:read", "tasks:write")
    answers = [
        limited.get("/tasks", headers=auth(token)),
        limited.get("/tasks/00000000-0000-0000-0000-000000000000", headers=auth(token)),
        limited.post("/tasks", json={"title": ""}, headers=auth(token)),
    ]
    assert [a.status_code for a in answers] == [200, 404, 422]
    for n, answer in enumerate(answers):
        assert answer.headers["X-RateLimit-Limit"] == "5"
        assert answer.headers["X-RateLimit-Remaining"] == str(5 - 1 - n)
        assert 1 <= int(answer.headers["X-RateLimit-Reset"]) <= 60
    unauthenticated = limited.get("/tasks")
    assert unauthenticated.status_code == 401
    assert not set(RATE_HEADERS) & set(unauthenticated.headers)
    assert "X-RateLimit-Limit" not in limited.get("/health/live").headers


def test_over_the_limit_is_429_with_retry_after(
    limited: TestClient, make_token: Callable[..., str], db: psycopg.Connection[Any]
) -> None:
    busy, other = make_token("tasks:read", "tasks:write", name="busy"), make_token("tasks:read")
    for _ in range(5):
        assert limited.get("/tasks", headers=auth(busy)).status_code == 200
    before = snapshot(db)
    refused = limited.post("/tasks", json=SEED_TASK, headers=auth(busy))
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:pao:problem:rate-limited"
    assert "PAO_RATE_LIMIT_PER_MINUTE" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert snapshot(db) == before  # the refused create stored nothing
    # Another agent has its own allowance.
    assert limited.get("/tasks", headers=auth(other)).status_code == 200
    # The window is over when the counter says so: move it back instead of waiting.
    db.execute("UPDATE rate_counters SET window_start = window_start - interval '61 seconds'")
    again = limited.get("/tasks", headers=auth(busy))
    assert again.status_code == 200
    assert again.headers["X-RateLimit-Remaining"] == "4"


def test_two_api_replicas_share_one_limit(
    db_url: str, settings: Settings, make_token: Callable[..., str]
) -> None:
    token = make_token("tasks:read")
    shared = replace(settings, rate_limit_per_minute=6)
    with _client(db_url, shared) as one, _client(db_url, shared) as two:
        assert one.app.state.pao.pool is not two.app.state.pao.pool  # type: ignore[attr-defined]
        statuses = [
            (one if n % 2 else two).get("/tasks", headers=auth(token)).status_code for n in range(6)
        ]
        assert statuses == [200] * 6
        assert one.get("/tasks", headers=auth(token)).status_code == 429
        assert two.get("/tasks", headers=auth(token)).status_code == 429


def test_failed_sign_ins_are_slowed_per_address(
    db_url: str, settings: Settings, make_token: Callable[..., str]
) -> None:
    token = make_token("tasks:read")
    guarded = replace(settings, auth_failures_per_minute=3)
    attacker = _client(db_url, guarded, client=("203.0.113.7", 40000))
    bystander = _client(db_url, guarded, client=("198.51.100.9", 40000))
    with attacker, bystander:
        for guess in (tokens.new_token(), "Bearer nonsense", None):
            headers = {"Authorization": f"Bearer {guess}"} if guess else {}
            assert attacker.get("/tasks", headers=headers).status_code == 401
        # Now another guess from that address is refused unanswered ...
        slowed = attacker.get("/tasks", headers=auth(tokens.new_token()))
        assert slowed.status_code == 429
        assert slowed.headers["content-type"] == "application/problem+json"
        assert 1 <= int(slowed.headers["Retry-After"]) <= 60
        assert "failed sign-ins" in slowed.json()["detail"]
        # ... but a valid token from it is served: others' failures never lock it out.
        assert attacker.get("/tasks", headers=auth(token)).status_code == 200
        # Another address signs in as usual.
        assert bystander.get("/tasks", headers=auth(token)).status_code == 200


def test_active_task_quota(
    db_url: str, settings: Settings, make_token: Callable[..., str], db: psycopg.Connection[Any]
) -> None:
    token = make_token("tasks:read", "tasks:write")
    with _client(db_url, replace(settings, max_active_tasks=2)) as client:
        ids = [client.post("/tasks", json=SEED_TASK, headers=auth(token)).json()["id"]]
        ids.append(client.post("/tasks", json=SEED_TASK, headers=auth(token)).json()["id"])
        client.post(f"/tasks/{ids[1]}/pause", headers=auth(token))  # paused still counts
        before = snapshot(db)
        refused = client.post("/tasks", json=SEED_TASK, headers=auth(token))
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"] == "urn:pao:problem:quota-exceeded"
        assert "PAO_MAX_ACTIVE_TASKS" in refused.json()["detail"]
        assert snapshot(db) == before
        assert client.post(f"/tasks/{ids[0]}/cancel", headers=auth(token)).status_code == 200
        assert client.post("/tasks", json=SEED_TASK, headers=auth(token)).status_code == 201


def _every(expr: str, kind: str = "cron") -> dict[str, Any]:
    return {**SEED_TASK, "schedule_kind": kind, "schedule_expr": expr}


def test_hourly_occurrence_quota(
    db_url: str, settings: Settings, make_token: Callable[..., str], db: psycopg.Connection[Any]
) -> None:
    token = make_token("tasks:read", "tasks:write")
    with _client(db_url, replace(settings, max_occurrences_per_hour=100)) as client:
        minutely = client.post("/tasks", json=_every("* * * * *"), headers=auth(token))
        assert minutely.status_code == 201
        before = snapshot(db)
        for body in (
            _every("* * * * *"),
            _every("FREQ=MINUTELY", "rrule"),
            _every("*/1 9-17 * * 1-5"),
        ):
            refused = client.post("/tasks", json=body, headers=auth(token))
            assert refused.status_code == 409, (body, refused.text)
            assert "PAO_MAX_OCCURRENCES_PER_HOUR" in refused.json()["detail"]
        assert snapshot(db) == before
        half = client.post("/tasks", json=_every("*/2 * * * *"), headers=auth(token)).json()
        event = client.post("/tasks", json=_every("github.*", "event"), headers=auth(token))
        assert event.status_code == 201  # events are paced by the request rate instead
        faster = client.put(
            f"/tasks/{half['id']}", json={"schedule_expr": "* * * * *"}, headers=auth(token)
        )
        assert faster.status_code == 409
        assert client.get(f"/tasks/{half['id']}", headers=auth(token)).json()["version"] == 1
        client.post(f"/tasks/{minutely.json()['id']}/cancel", headers=auth(token))
        assert (
            client.put(
                f"/tasks/{half['id']}", json={"schedule_expr": "* * * * *"}, headers=auth(token)
            ).status_code
            == 200
        )


def test_idle_counters_are_pruned(db_url: str, db: psycopg.Connection[Any]) -> None:
    db.execute(
        "INSERT INTO rate_counters (key, window_start, hits) VALUES "
        "('auth:192.0.2.1', now() - interval '2 hours', 3), ('agent:x', now(), 1)"
    )

    async def prune() -> int:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                return await rate_counters.prune(conn, now=datetime.now(UTC), limit=10)
        finally:
            await conn.close()

    assert asyncio.run(prune()) == 1
    assert db.execute("SELECT key FROM rate_counters").fetchall() == [("agent:x",)]


def test_sign_in_commits_without_waiting_for_the_wal_flush_and_nothing_else_does(
    db_url: str,
) -> None:
    async def modes() -> tuple[str, str, str]:
        conn = await connect(db_url)
        try:
            show = "SELECT current_setting('synchronous_commit') AS mode"
            before = await (await conn.execute(show)).fetchone()
            await rate_counters.sign_in(
                conn.cursor(),
                None,
                failures_key="auth:192.0.2.9",
                failures_limit=5,
                rate_limited=True,
                window=60,
            )
            during = await (await conn.execute(show)).fetchone()  # same transaction
            await conn.commit()
            after = await (await conn.execute(show)).fetchone()
            assert before is not None
            assert during is not None
            assert after is not None
            return before["mode"], during["mode"], after["mode"]
        finally:
            await conn.close()

    assert asyncio.run(modes()) == ("on", "off", "on")


def test_a_task_column_added_while_the_api_runs_costs_at_most_a_retry(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    """A rolling deploy's migration changes `tasks` under a running API whose statements
    are prepared: a connection that meets the change answers one retryable 503 and is
    replaced, instead of failing that statement until the process restarts."""
    created = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token))
    assert created.status_code == 201
    path = f"/tasks/{created.json()['id']}"
    before = [client.get(path, headers=auth(writer_token)) for _ in range(8)]  # prepared by now
    assert {r.status_code for r in before} == {200}
    db.execute("ALTER TABLE tasks ADD COLUMN added_later text NOT NULL DEFAULT 'new'")
    answers = [client.get(path, headers=auth(writer_token)) for _ in range(6)]
    refused = [r for r in answers if r.status_code != 200]
    assert 1 <= len(refused) <= 2, [r.text for r in refused]  # one per lane connection
    for r in refused:
        assert r.status_code == 503, r.text
        assert r.json()["type"] == "urn:pao:problem:database-unavailable"
        assert r.headers["Retry-After"] == "2"
    assert [r.status_code for r in answers[-3:]] == [200, 200, 200]
    body = answers[-1].json()
    assert body["id"] == created.json()["id"]
    assert "added_later" not in body
