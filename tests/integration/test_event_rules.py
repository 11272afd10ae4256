"""Events under their rules: a step does only what its task's owner may, a chain of events
ends after PAO_EVENT_MAX_HOPS hops, event-fired runs count toward the owner's hourly quota,
and an event reaches other agents' tasks only through an audience set with events:broadcast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from pao.db import connect
from pao.migrate import available, migrate
from pao.settings import Settings
from pao.sql import QUERIES
from tests.background import scheduler, worker
from tests.helpers import SEED_TASK, auth, create_task, run_now, until

EMIT = {"id": "emit", "uses": "events.publish", "with": {"type": "ping"}}
LOG = {"id": "hello", "uses": "log", "with": {"message": "hi"}}
BASIC = ("tasks:read", "tasks:write", "runs:read")
PUBLISHER = (*BASIC, "events:publish")


def _agent_id(db: psycopg.Connection[Any], name: str) -> str:
    row = db.execute("SELECT id::text FROM agents WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def _event_task(client: TestClient, token: str, pattern: str, *steps: dict[str, Any]) -> str:
    return create_task(
        client, token, *(steps or (LOG,)), schedule_kind="event", schedule_expr=pattern
    )


def _fired(db: psycopg.Connection[Any], task_id: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM due_work WHERE task_id = %s AND reason = 'event'", (task_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def _count(db: psycopg.Connection[Any], query: str, *args: object) -> int:
    row = db.execute(query, args).fetchone()
    assert row is not None
    return int(row[0])


def _decisions(client: TestClient, token: str, task_id: str) -> list[dict[str, Any]]:
    resp = client.get(
        f"/tasks/{task_id}/occurrences", params={"past": "true", "count": 100}, headers=auth(token)
    )
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def _final_run(client: TestClient, token: str, run_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/runs/{run_id}", headers=auth(token)).json()
        return None if run["status"] in ("queued", "running") else run

    found: dict[str, Any] = until(check, f"run {run_id} to end")
    return found


# A step may only do what its task's owner may -----------------------------------------


def test_a_publish_step_needs_the_owners_events_publish_scope(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
) -> None:
    plain = make_token(*BASIC, name="plain")
    body = {**SEED_TASK, "payload": {"pipeline": [LOG, EMIT]}}
    refused = client.post("/tasks", json=body, headers=auth(plain))
    assert refused.status_code == 403, refused.text
    detail = refused.json()["detail"]
    assert "'events:publish'" in detail, detail
    assert "'emit'" in detail, detail
    assert _count(db, "SELECT count(*) FROM tasks") == 0

    # Nor may an edit slip the step in.
    task_id = create_task(client, plain, LOG)
    edit = client.put(
        f"/tasks/{task_id}", json={"payload": {"pipeline": [EMIT]}}, headers=auth(plain)
    )
    assert edit.status_code == 403, edit.text
    assert "'events:publish'" in edit.json()["detail"]

    # An admin writing the task for the plain agent is held to the owner's scopes too...
    owned = client.post(
        "/tasks", json={**body, "created_by": _agent_id(db, "plain")}, headers=auth(admin_token)
    )
    assert owned.status_code == 403, owned.text
    # ...while its own task may publish: an admin has every scope.
    assert client.post("/tasks", json=body, headers=auth(admin_token)).status_code == 201


@pytest.mark.parametrize("taken_away", ["scope", "disabled"])
def test_a_publish_step_fails_at_run_time_once_its_owner_may_no_longer_publish(
    taken_away: str,
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
    db_url: str,
) -> None:
    publisher = make_token(*PUBLISHER, name="publisher")
    other = make_token(*PUBLISHER, name="other")
    task_id = create_task(client, publisher, EMIT, max_retries=3, backoff_strategy="fixed")
    own_listener = _event_task(client, publisher, "ping")
    other_listener = _event_task(client, other, "*")
    change = {"scopes": list(BASIC)} if taken_away == "scope" else {"disabled": True}
    resp = client.put(
        f"/agents/{_agent_id(db, 'publisher')}", json=change, headers=auth(admin_token)
    )
    assert resp.status_code == 200, resp.text

    with worker(db_url, retry_base_seconds=0), scheduler(db_url, scheduler_tick_ms=100):
        run = run_now(client, admin_token, task_id)
        ended = _final_run(client, admin_token, run)
    assert ended["status"] == "failed", ended
    why = "'events:publish'" if taken_away == "scope" else "disabled"
    assert why in ended["error"], ended["error"]
    assert why in ended["steps"][0]["error"]
    # Retrying cannot help: the run failed once, for good.
    assert db.execute("SELECT state, attempt FROM due_work").fetchall() == [("failed", 1)]
    assert _count(db, "SELECT count(*) FROM events") == 0
    assert _fired(db, own_listener) == 0
    assert _fired(db, other_listener) == 0


# Chains of events end; event-fired runs are counted ------------------------------------


def test_an_event_loop_ends_after_the_hop_limit(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    """Each run of `boom` publishes `boom` twice. Hops 0, 1 and 2 fire 1 + 2 + 4 runs; the 8
    events of hop 3 are stored and fire nothing, each leaving a record that says why."""
    emit = {"uses": "events.publish", "with": {"type": "boom"}}
    boom = _event_task(client, writer_token, "boom", {"id": "a", **emit}, {"id": "b", **emit})
    resp = client.post("/events", json={"type": "boom"}, headers=auth(writer_token))
    assert resp.status_code == 202, resp.text

    def settled() -> bool:
        events = _count(db, "SELECT count(*) FROM events WHERE dispatched_at IS NOT NULL")
        busy = _count(db, "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')")
        return events == 15 and busy == 0

    with worker(db_url), scheduler(db_url, scheduler_tick_ms=100, event_max_hops=2):
        until(settled, "the loop to stop")
    assert _count(db, "SELECT count(*) FROM events") == 15
    assert _count(db, "SELECT count(*) FROM runs WHERE status = 'succeeded'") == 7
    assert _count(db, "SELECT count(*) FROM runs") == 7
    hops = dict(db.execute("SELECT hop, count(*) FROM events GROUP BY hop").fetchall())
    assert hops == {0: 1, 1: 2, 2: 4, 3: 8}
    # Each event of a step names the run that published it, and is one hop past its event.
    orphans = _count(
        db,
        "SELECT count(*) FROM events e LEFT JOIN runs r ON r.id = e.source_run_id "
        "LEFT JOIN due_work d ON d.id = r.due_work_id "
        "LEFT JOIN events parent ON parent.id = d.event_id "
        "WHERE e.hop > 0 AND (parent.id IS NULL OR parent.hop <> e.hop - 1)",
    )
    assert orphans == 0
    records = _decisions(client, writer_token, boom)
    stopped = [r for r in records if r["decision"] == "hop_limit"]
    assert len(stopped) == 8
    assert len([r for r in records if r["decision"] == "queued"]) == 7
    assert all(
        "3 hops" in r["detail"] and "PAO_EVENT_MAX_HOPS=2" in r["detail"] for r in stopped
    ), stopped


def test_a_run_now_run_publishes_at_hop_zero(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any], db_url: str
) -> None:
    task_id = create_task(client, writer_token, EMIT)
    with worker(db_url):
        run = run_now(client, writer_token, task_id)
        assert _final_run(client, writer_token, run)["status"] == "succeeded"
    rows = db.execute("SELECT hop, source_run_id::text, published_by::text FROM events").fetchall()
    assert rows == [(0, run, _agent_id(db, "writer"))]


@pytest.fixture
def quota_client(db_url: str) -> Iterator[TestClient]:
    """The API with a small hourly quota: a minutely schedule (60) and two more."""
    settings = Settings(pool_min_size=1, pool_max_size=4, max_occurrences_per_hour=62)
    with TestClient(create_app(settings, database_url=db_url)) as c:
        yield c


def test_event_fired_runs_count_toward_the_hourly_quota(
    quota_client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    client = quota_client
    create_task(client, writer_token, LOG, schedule_kind="cron", schedule_expr="* * * * *")
    listener = _event_task(client, writer_token, "tick")
    queued = [
        client.post("/events", json={"type": "tick"}, headers=auth(writer_token)).json()["queued"]
        for _ in range(4)
    ]
    assert queued == [1, 1, 0, 0]
    assert _fired(db, listener) == 2
    records = _decisions(client, writer_token, listener)
    over = [r for r in records if r["decision"] == "over_quota"]
    assert len(over) == 2
    assert all("PAO_MAX_OCCURRENCES_PER_HOUR=62" in r["detail"] for r in over), over


# Other agents' events --------------------------------------------------------------------


def test_an_event_reaches_only_its_publishers_own_tasks(
    client: TestClient, make_token: Callable[..., str], db: psycopg.Connection[Any]
) -> None:
    alice = make_token(*PUBLISHER, name="alice")
    bob = make_token(*PUBLISHER, name="bob")
    mine = _event_task(client, alice, "news")
    snoop = _event_task(
        client, bob, "*", {"id": "copy", "uses": "log", "with": {"message": "${event.payload}"}}
    )
    resp = client.post(
        "/events", json={"type": "news", "payload": {"secret": 1}}, headers=auth(alice)
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["queued"] == 1
    assert (_fired(db, mine), _fired(db, snoop)) == (1, 0)


def test_an_audience_needs_events_broadcast(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
) -> None:
    alice = make_token(*PUBLISHER, name="alice")
    caster = make_token(*PUBLISHER, "events:broadcast", name="caster")
    bob = make_token(*PUBLISHER, name="bob")
    carol = make_token(*PUBLISHER, name="carol")
    bob_id = _agent_id(db, "bob")
    tasks = {
        name: _event_task(client, token, "news")
        for name, token in (("caster", caster), ("bob", bob), ("carol", carol))
    }

    for audience in ("*", [bob_id], []):
        refused = client.post(
            "/events", json={"type": "news", "audience": audience}, headers=auth(alice)
        )
        assert refused.status_code == 403, refused.text
        assert "'events:broadcast'" in refused.json()["detail"]
    assert _count(db, "SELECT count(*) FROM events") == 0

    listed = client.post(
        "/events", json={"type": "news", "audience": [bob_id]}, headers=auth(caster)
    )
    assert listed.status_code == 202, listed.text
    assert {n: _fired(db, t) for n, t in tasks.items()} == {"caster": 1, "bob": 1, "carol": 0}

    everyone = client.post("/events", json={"type": "news", "audience": "*"}, headers=auth(caster))
    assert everyone.status_code == 202, everyone.text
    assert {n: _fired(db, t) for n, t in tasks.items()} == {"caster": 2, "bob": 2, "carol": 1}

    by_admin = client.post(
        "/events", json={"type": "news", "audience": "*"}, headers=auth(admin_token)
    )
    assert by_admin.status_code == 202, by_admin.text
    assert {n: _fired(db, t) for n, t in tasks.items()} == {"caster": 3, "bob": 3, "carol": 2}

    # Without an audience, an admin's event is its own too.
    client.post("/events", json={"type": "news"}, headers=auth(admin_token))
    assert {n: _fired(db, t) for n, t in tasks.items()} == {"caster": 3, "bob": 3, "carol": 2}

    bad = client.post("/events", json={"type": "news", "audience": "bob"}, headers=auth(caster))
    assert bad.status_code == 422, bad.text


@pytest.mark.parametrize(
    "forged",
    [
        {"hop": 99},
        {"source_run_id": "00000000-0000-0000-0000-000000000001"},
        {"published_by": "00000000-0000-0000-0000-000000000001"},
        {"audience_all": True},
    ],
)
def test_an_event_body_cannot_forge_its_origin(
    forged: dict[str, Any],
    client: TestClient,
    writer_token: str,
    db: psycopg.Connection[Any],
) -> None:
    resp = client.post("/events", json={"type": "news", **forged}, headers=auth(writer_token))
    assert resp.status_code == 422, resp.text
    assert _count(db, "SELECT count(*) FROM events") == 0


def test_a_step_audience_needs_events_broadcast_at_create_and_at_run_time(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
    db_url: str,
) -> None:
    alice = make_token(*PUBLISHER, name="alice")
    caster = make_token(*PUBLISHER, "events:broadcast", name="caster")
    bob = make_token(*PUBLISHER, name="bob")
    bob_listener = _event_task(client, bob, "ping")
    shout = {"id": "shout", "uses": "events.publish", "with": {"type": "ping", "audience": "*"}}

    refused = client.post(
        "/tasks", json={**SEED_TASK, "payload": {"pipeline": [shout]}}, headers=auth(alice)
    )
    assert refused.status_code == 403, refused.text
    assert "'events:broadcast'" in refused.json()["detail"]
    assert "'shout'" in refused.json()["detail"]

    # A plain step event of alice's reaches her own tasks only.
    quiet = create_task(client, alice, EMIT)
    own = _event_task(client, alice, "ping")
    loud = create_task(client, caster, shout)
    revoked = create_task(client, caster, {**shout, "id": "again"})
    with worker(db_url, retry_base_seconds=0), scheduler(db_url, scheduler_tick_ms=100):
        assert _final_run(client, alice, run_now(client, alice, quiet))["status"] == "succeeded"
        until(lambda: _fired(db, own) == 1, "alice's own listener to fire")
        assert _final_run(client, caster, run_now(client, caster, loud))["status"] == "succeeded"
        until(lambda: _fired(db, bob_listener) == 1, "bob's listener to hear the broadcast")
        resp = client.put(
            f"/agents/{_agent_id(db, 'caster')}",
            json={"scopes": list(PUBLISHER)},
            headers=auth(admin_token),
        )
        assert resp.status_code == 200, resp.text
        ended = _final_run(client, caster, run_now(client, caster, revoked))
    assert ended["status"] == "failed"
    assert "'events:broadcast'" in ended["error"], ended["error"]
    assert _fired(db, bob_listener) == 1
    assert _count(db, "SELECT count(*) FROM events") == 2


def test_events_broadcast_is_a_scope_an_admin_can_grant(
    client: TestClient, admin_token: str
) -> None:
    resp = client.post(
        "/agents",
        json={"name": "caster", "scopes": ["events:publish", "events:broadcast"]},
        headers=auth(admin_token),
    )
    assert resp.status_code == 201, resp.text
    assert "events:broadcast" in resp.json()["scopes"]


# The migration -------------------------------------------------------------------------


def test_the_migration_keeps_existing_events_at_hop_zero_for_their_publishers(
    db_url: str,
) -> None:
    """Events from before: hop 0, no audience; a step's event not yet fanned out gets its
    task's owner as publisher, so it reaches that owner's tasks under the new rule."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")

    before = [m for m in available() if m.version < 13]

    async def migrate_to_twelve() -> None:
        conn = await connect(db_url, autocommit=True)
        try:
            await conn.execute(QUERIES["migrations_create_table"])
            for m in before:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        QUERIES["migrations_record"], {"version": m.version, "name": m.name}
                    )
        finally:
            await conn.close()

    asyncio.run(migrate_to_twelve())
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = conn.execute(
            "INSERT INTO agents (name, token_hash, token_prefix, scopes) "
            "VALUES ('a', decode(repeat('ab', 32), 'hex'), 'pao_x', '{events:publish}') "
            "RETURNING id"
        ).fetchone()
        assert owner is not None
        task = conn.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone) "
            "VALUES (%s, 't', 'cron', '* * * * *', 'UTC') RETURNING id",
            (owner[0],),
        ).fetchone()
        assert task is not None
        work = conn.execute(
            "INSERT INTO due_work (task_id, scheduled_for, run_after, reason) "
            "VALUES (%s, now(), now(), 'run_now') RETURNING id",
            (task[0],),
        ).fetchone()
        assert work is not None
        run = conn.execute(
            "INSERT INTO runs (due_work_id, task_id, scheduled_for) VALUES (%s, %s, now()) "
            "RETURNING id",
            (work[0], task[0]),
        ).fetchone()
        assert run is not None
        conn.execute(
            "INSERT INTO events (type, published_by, dispatched_at) VALUES ('old', %s, now())",
            (owner[0],),
        )
        conn.execute(
            "INSERT INTO events (type, source_run_id, idempotency_key) VALUES ('step', %s, 'k')",
            (run[0],),
        )

    applied = asyncio.run(migrate(db_url))
    assert [m.version for m in applied] == [m.version for m in available() if m.version >= 13]
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT type, hop, audience_all, audience, published_by FROM events ORDER BY type"
        ).fetchall()
    assert rows == [("old", 0, False, None, owner[0]), ("step", 0, False, None, owner[0])]
