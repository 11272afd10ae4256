"""A token is shown once, in the answer that creates it, and nowhere else: not in
logs, not in other answers, not in any table."""

from __future__ import annotations

import base64
import logging
from dataclasses import replace
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from api.app import create_app
from pao import tokens
from pao.settings import Settings
from tests.helpers import SEED_TASK, all_tables, auth


def _spellings(token: str) -> list[str]:
    """The token, its secret part, and encodings a careless store might use."""
    secret = token[len(tokens.PREFIX) :]
    return [
        token,
        secret,
        token.encode().hex(),
        base64.b64encode(token.encode()).decode().rstrip("="),
        secret[:16],
    ]


def _database_dump(db: psycopg.Connection[Any]) -> str:
    parts = []
    for table in all_tables(db):
        query = sql.SQL("SELECT t::text FROM {} AS t").format(sql.Identifier(table))
        parts += [str(row[0]) for row in db.execute(query).fetchall()]
    return "\n".join(parts)


def _text(resp: httpx.Response) -> str:
    return resp.text + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers.items())


def test_tokens_never_leak(
    db_url: str,
    settings: Settings,
    db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = tokens.new_token()
    answers: list[httpx.Response] = []
    app = create_app(replace(settings, admin_token=admin), database_url=db_url)
    with TestClient(app) as client:
        created = client.post(
            "/agents",
            json={"name": "bot", "scopes": ["tasks:read", "tasks:write", "events:publish"]},
            headers=auth(admin),
        )
        assert created.status_code == 201
        token = created.json()["token"]
        bot = auth(token)
        task = client.post("/tasks", json=SEED_TASK, headers=bot)
        answers.append(task)
        for method, path, body, headers in [
            ("GET", "/tasks", None, bot),
            ("GET", f"/tasks/{task.json()['id']}", None, bot),
            ("PUT", f"/tasks/{task.json()['id']}", {"title": ""}, bot),
            ("POST", "/tasks", SEED_TASK, {**bot, "Idempotency-Key": "k1"}),
            ("POST", "/tasks", SEED_TASK, {**bot, "Idempotency-Key": "k1"}),
            ("POST", "/events", {"type": "x.y", "payload": {"t": 1}}, bot),
            ("GET", "/agents", None, bot),  # 403
            ("GET", "/runs", None, bot),  # 403
            ("GET", "/tasks", None, {"Authorization": f"Bearer {token}x"}),
            ("GET", "/tasks", None, {"Authorization": f"Bearer {token[:-1]}"}),
            ("GET", "/tasks", None, {"Authorization": token}),
            ("GET", "/agents", None, auth(admin)),
        ]:
            answers.append(client.request(method, path, json=body, headers=headers))
        bot_id = created.json()["id"]
        answers.append(client.delete(f"/agents/{bot_id}", headers=auth(admin)))
        answers.append(client.get("/tasks", headers=bot))
    assert [a.status_code for a in answers][-3:] == [200, 204, 401]
    logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "created the admin agent" in logs  # the capture did see our logs
    dump = _database_dump(db)
    assert "tasks:write" in dump  # the dump did see the agent's row
    for secret in (token, admin):
        for spelling in _spellings(secret):
            assert spelling not in logs
            assert spelling not in dump
            for answer in answers:
                assert spelling not in _text(answer), answer.request.url
