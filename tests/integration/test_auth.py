"""Tokens, scopes and ownership."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api.deps import RequireScope
from api.openapi import api_routes
from pao import tokens
from tests.helpers import SEED_TASK, auth

# The dashboard is static and holds no data: it calls the API with the token pasted into it.
PUBLIC_PATHS = {
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/ui",
    "/ui/",
    "/ui/{name}",
    # A signed asset link is its own credential (HMAC over the asset id and expiry).
    "/asset-links/{asset_id}",
}


def _scopes_of(route: APIRoute) -> set[str]:
    found: set[str] = set()
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, RequireScope):
            found.add(dep.call.scope)
        stack.extend(dep.dependencies)
    return found


def test_every_route_declares_its_scope(app: FastAPI) -> None:
    routes = api_routes(list(app.routes))
    assert len(routes) >= 20
    for route in routes:
        if route.path in PUBLIC_PATHS:
            assert not _scopes_of(route), route.path
            continue
        assert len(_scopes_of(route)) == 1, f"{route.methods} {route.path} declares no scope"
    by_path = {(m, r.path): _scopes_of(r) for r in routes for m in r.methods or ()}
    assert by_path[("POST", "/tasks")] == {"tasks:write"}
    assert by_path[("GET", "/tasks/{task_id}")] == {"tasks:read"}
    assert by_path[("GET", "/runs/{run_id}")] == {"runs:read"}
    assert by_path[("GET", "/runs/{run_id}/stream")] == {"runs:read"}
    assert by_path[("GET", "/tasks/{task_id}/stream")] == {"runs:read"}
    assert by_path[("POST", "/events")] == {"events:publish"}
    assert by_path[("DELETE", "/agents/{agent_id}")] == {"admin"}
    assert by_path[("POST", "/assets")] == {"assets:write"}
    assert by_path[("DELETE", "/assets/{asset_id}")] == {"assets:write"}
    assert by_path[("GET", "/assets/{asset_id}/content")] == {"assets:read"}
    assert by_path[("POST", "/assets/{asset_id}/links")] == {"assets:read"}


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bearer pao_nottherightshape",
        "Bearer " + tokens.new_token(),  # well formed, unknown
        "Bearer " + tokens.new_token()[:-1] + "x",  # bad checksum
        "Token abc",
    ],
    # Named, so that every collector (one per xdist worker) sees the same ids for the random tokens.
    ids=[
        "none",
        "empty",
        "bearer",
        "bearer-space",
        "basic",
        "lowercase",
        "unknown",
        "checksum",
        "other",
    ],
)
def test_bad_credentials_get_the_same_401(client: TestClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    resp = client.get("/tasks", headers=headers)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    del body["request_id"]
    assert body == {
        "type": "urn:pao:problem:unauthenticated",
        "title": "Unauthenticated",
        "status": 401,
        "detail": "Missing, unknown, revoked or expired bearer token.",
    }


def test_non_ascii_in_a_token_is_401_not_500(client: TestClient) -> None:
    token = tokens.new_token()
    for spoiled in (token[:-1] + "é", token[:10] + "é" + token[11:], "pao_" + "é" * 38):
        header = f"Bearer {spoiled}".encode("latin-1")
        resp = client.get("/tasks", headers=[(b"Authorization", header)])
        assert resp.status_code == 401, resp.text
        assert not tokens.is_well_formed(spoiled)


def test_revoked_disabled_and_expired_tokens_are_401(
    client: TestClient,
    admin_token: str,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    revoked, disabled, expired = (make_token("tasks:read", name=n) for n in ("r", "d", "e"))
    for tok in (revoked, disabled, expired):
        assert client.get("/tasks", headers=auth(tok)).status_code == 200
    ids = {row[0]: str(row[1]) for row in db.execute("SELECT name, id FROM agents").fetchall()}
    assert client.delete(f"/agents/{ids['r']}", headers=auth(admin_token)).status_code == 204
    assert (
        client.put(
            f"/agents/{ids['d']}", json={"disabled": True}, headers=auth(admin_token)
        ).status_code
        == 200
    )
    db.execute("UPDATE agents SET expires_at = now() - interval '1 second' WHERE name = 'e'")
    for tok in (revoked, disabled, expired):
        resp = client.get("/tasks", headers=auth(tok))
        assert resp.status_code == 401
    assert client.get(f"/agents/{ids['r']}", headers=auth(admin_token)).status_code == 404


def test_missing_scope_is_403_naming_it(client: TestClient, make_token: Callable[..., str]) -> None:
    reader = make_token("tasks:read")
    resp = client.post("/tasks", json=SEED_TASK, headers=auth(reader))
    assert resp.status_code == 403
    assert "tasks:write" in resp.json()["detail"]
    assert client.get("/runs", headers=auth(reader)).status_code == 403
    assert client.post("/events", json={"type": "x"}, headers=auth(reader)).status_code == 403
    assert client.get("/agents", headers=auth(reader)).status_code == 403


def test_other_agents_objects_are_404(
    client: TestClient, make_token: Callable[..., str], admin_token: str
) -> None:
    scopes = ("tasks:read", "tasks:write", "runs:read")
    alice, bob = make_token(*scopes, name="alice"), make_token(*scopes, name="bob")
    task = client.post("/tasks", json=SEED_TASK, headers=auth(alice)).json()
    run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(alice)).json()
    tid, rid = task["id"], run["id"]
    for method, path, body in [
        ("GET", f"/tasks/{tid}", None),
        ("GET", f"/tasks/{tid}/occurrences", None),
        ("PUT", f"/tasks/{tid}", {"title": "mine now"}),
        ("POST", f"/tasks/{tid}/run_now", None),
        ("POST", f"/tasks/{tid}/pause", None),
        ("POST", f"/tasks/{tid}/resume", None),
        ("POST", f"/tasks/{tid}/snooze", {"seconds": 5}),
        ("POST", f"/tasks/{tid}/cancel", None),
        ("GET", f"/runs/{rid}", None),
        ("GET", f"/runs/{rid}/logs", None),
        ("POST", f"/runs/{rid}/cancel", None),
    ]:
        resp = client.request(method, path, json=body, headers=auth(bob))
        assert resp.status_code == 404, (method, path, resp.text)
    assert client.get("/tasks", headers=auth(bob)).json()["items"] == []
    assert client.get("/runs", headers=auth(bob)).json()["items"] == []
    # The admin sees everything.
    assert client.get(f"/tasks/{tid}", headers=auth(admin_token)).status_code == 200
    assert client.get(f"/runs/{rid}", headers=auth(admin_token)).status_code == 200
    # And alice still owns an untouched task.
    assert client.get(f"/tasks/{tid}", headers=auth(alice)).json()["title"] == SEED_TASK["title"]


def test_one_task_read_with_the_sign_in_keeps_every_check(
    client: TestClient, make_token: Callable[..., str], db: psycopg.Connection[Any]
) -> None:
    """GET /tasks/{id} reads the task in the sign-in's statement; the answers stay the same."""
    writer = make_token("tasks:write", name="writer-only")
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer)).json()
    own = client.get(f"/tasks/{task['id']}", headers=auth(writer))
    assert own.status_code == 403  # its own task, but no tasks:read
    assert "tasks:read" in own.json()["detail"]
    assert client.get(f"/tasks/{task['id']}").status_code == 401
    reader = make_token("tasks:read", name="reader")
    assert client.get("/tasks/not-a-uuid").status_code == 401  # signed in before validated
    assert client.get("/tasks/not-a-uuid", headers=auth(reader)).status_code == 422
    failures = db.execute("SELECT hits FROM rate_counters WHERE key LIKE 'auth:%'").fetchone()
    assert failures == (2,)
    nowhere = "00000000-0000-0000-0000-000000000001"
    missing = client.get(f"/tasks/{nowhere}", headers=auth(reader))
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"no task {nowhere}"
    assert client.get(f"/tasks/{task['id']}", headers=auth(reader)).status_code == 404


def test_created_by_another_agent_needs_admin(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db: psycopg.Connection[Any],
) -> None:
    alice = make_token("tasks:read", "tasks:write", name="alice")
    bob_id = str(db.execute("SELECT id FROM agents WHERE name = 'root'").fetchone()[0])  # type: ignore[index]
    resp = client.post("/tasks", json={**SEED_TASK, "created_by": bob_id}, headers=auth(alice))
    assert resp.status_code == 403
    alice_id = str(db.execute("SELECT id FROM agents WHERE name = 'alice'").fetchone()[0])  # type: ignore[index]
    by_admin = client.post(
        "/tasks", json={**SEED_TASK, "created_by": alice_id}, headers=auth(admin_token)
    )
    assert by_admin.status_code == 201
    assert by_admin.json()["created_by"] == alice_id
    assert client.get(f"/tasks/{by_admin.json()['id']}", headers=auth(alice)).status_code == 200


def test_tokens_are_stored_only_as_hashes(
    client: TestClient, admin_token: str, db: psycopg.Connection[Any]
) -> None:
    resp = client.post(
        "/agents", json={"name": "bot", "scopes": ["tasks:read"]}, headers=auth(admin_token)
    )
    assert resp.status_code == 201
    token = resp.json()["token"]
    assert tokens.is_well_formed(token)
    assert client.get("/tasks", headers=auth(token)).status_code == 200
    dump = str(db.execute("SELECT * FROM agents").fetchall()) + str(
        db.execute("SELECT * FROM audit_log").fetchall()
    )
    assert token not in dump
    assert token[len("pao_") :] not in dump
    listed = client.get("/agents", headers=auth(admin_token)).text
    assert token not in listed
