"""Idempotency-Key on POST /tasks and POST /events."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from api.idempotency import request_hash
from pao.db import connect
from pao.store import idempotency
from tests.helpers import SEED_TASK, auth


def test_replay_returns_the_first_response(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    headers = {**auth(writer_token), "Idempotency-Key": "create-1"}
    first = client.post("/tasks", json=SEED_TASK, headers=headers)
    second = client.post("/tasks", json=SEED_TASK, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert db.execute("SELECT count(*) FROM tasks").fetchone() == (1,)


def test_same_key_other_body_is_422(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    headers = {**auth(writer_token), "Idempotency-Key": "create-2"}
    assert client.post("/tasks", json=SEED_TASK, headers=headers).status_code == 201
    other = client.post("/tasks", json={**SEED_TASK, "title": "other"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["type"] == "urn:pao:problem:idempotency-mismatch"
    assert db.execute("SELECT count(*) FROM tasks").fetchone() == (1,)


def test_key_in_flight_is_409(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    agent_id = uuid.UUID(str(db.execute("SELECT id FROM agents").fetchone()[0]))  # type: ignore[index]

    async def hold() -> None:
        conn = await connect(db_url)
        async with conn.transaction():
            await idempotency.claim(
                conn,
                agent_id=agent_id,
                endpoint="POST /tasks",
                key="busy",
                request_hash=request_hash(json.dumps(SEED_TASK).encode()),
            )
        await conn.close()

    asyncio.run(hold())
    resp = client.post(
        "/tasks", json=SEED_TASK, headers={**auth(writer_token), "Idempotency-Key": "busy"}
    )
    assert resp.status_code == 409
    assert resp.json()["type"] == "urn:pao:problem:idempotency-in-flight"
    assert db.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_a_failed_request_frees_its_key(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    headers = {**auth(writer_token), "Idempotency-Key": "retry-me"}
    bad = client.post("/tasks", json={**SEED_TASK, "timezone": "Nowhere/Land"}, headers=headers)
    assert bad.status_code == 422
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)
    good = client.post("/tasks", json=SEED_TASK, headers=headers)
    assert good.status_code == 201


def test_keys_are_per_agent(client: TestClient, writer_token: str, admin_token: str) -> None:
    a = client.post(
        "/tasks", json=SEED_TASK, headers={**auth(writer_token), "Idempotency-Key": "k"}
    )
    b = client.post("/tasks", json=SEED_TASK, headers={**auth(admin_token), "Idempotency-Key": "k"})
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_events_honour_the_key(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    headers = {**auth(writer_token), "Idempotency-Key": "evt-1"}
    body = {"type": "github.push", "payload": {"n": 1}}
    first = client.post("/events", json=body, headers=headers)
    again = client.post("/events", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert db.execute("SELECT count(*) FROM events").fetchone() == (1,)
    mismatch = client.post("/events", json={**body, "payload": {"n": 2}}, headers=headers)
    assert mismatch.status_code == 422


def test_bad_key_is_422(client: TestClient, writer_token: str) -> None:
    resp = client.post(
        "/tasks", json=SEED_TASK, headers={**auth(writer_token), "Idempotency-Key": "x" * 300}
    )
    assert resp.status_code == 422
