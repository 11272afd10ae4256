"""Task types: declaring them, hostile schemas, and tasks whose steps use them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from pao.settings import Settings
from tests.helpers import SEED_TASK, auth, snapshot, until

TRANSCODE: dict[str, Any] = {
    "name": "media.transcode",
    "description": "Transcode a video.",
    "parameters_schema": {
        "type": "object",
        "properties": {
            "url": {"type": "string", "pattern": "^https://"},
            "width": {"type": "integer", "minimum": 16, "maximum": 8192},
        },
        "required": ["url", "width"],
        "additionalProperties": False,
    },
    "output_schema": {
        "type": "object",
        "properties": {"url": {"type": "string"}},
        "required": ["url"],
    },
    "metadata": {"team": "video"},
    "lease_seconds": 30,
    "cost_per_call": 0.25,
}


@pytest.fixture
def app_factory(db_url: str, settings: Settings) -> Callable[[], Any]:
    return lambda: create_app(settings, database_url=db_url)


def create_type(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    resp = client.post("/task-types", json={**TRANSCODE, **fields}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def transcode_task(width: Any = 640, url: str = "https://example.com/a.mp4") -> dict[str, Any]:
    step = {"id": "encode", "uses": "media.transcode", "with": {"url": url, "width": width}}
    return {**SEED_TASK, "payload": {"pipeline": [step]}}


def test_crud(client: TestClient, admin_token: str, writer_token: str) -> None:
    created = create_type(client, admin_token)
    assert created["name"] == "media.transcode"
    assert created["lease_seconds"] == 30
    assert created["cost_per_call"] in ("0.25", 0.25)
    assert created["is_active"]
    assert created["version"] == 1

    # Anyone with tasks:read sees them; only admins change them.
    listed = client.get("/task-types", headers=auth(writer_token)).json()
    assert [t["name"] for t in listed["items"]] == ["media.transcode"]
    one = client.get("/task-types/media.transcode", headers=auth(writer_token))
    assert one.status_code == 200
    assert one.json()["metadata"] == {"team": "video"}
    assert client.post("/task-types", json=TRANSCODE, headers=auth(writer_token)).status_code == 403
    assert client.get("/task-types/nope", headers=auth(writer_token)).status_code == 404

    body = {k: v for k, v in TRANSCODE.items() if k != "name"}
    put = client.put(
        "/task-types/media.transcode",
        json={**body, "lease_seconds": 90},
        headers=auth(admin_token),
    )
    assert put.status_code == 200, put.text
    assert put.json()["lease_seconds"] == 90
    assert put.json()["version"] == 2

    # Listed by GET /tools as a remote tool; built-ins say builtin.
    tools = {t["name"]: t for t in client.get("/tools", headers=auth(writer_token)).json()["items"]}
    assert tools["media.transcode"]["kind"] == "remote"
    assert tools["media.transcode"]["input_schema"] == TRANSCODE["parameters_schema"]
    assert tools["log"]["kind"] == "builtin"

    # Soft delete: kept, inactive, no longer a tool; a second delete is fine.
    assert (
        client.delete("/task-types/media.transcode", headers=auth(admin_token)).status_code == 204
    )
    assert (
        client.delete("/task-types/media.transcode", headers=auth(admin_token)).status_code == 204
    )
    gone = client.get("/task-types/media.transcode", headers=auth(writer_token)).json()
    assert gone["is_active"] is False
    assert client.get("/task-types", headers=auth(writer_token)).json()["items"] == []
    inactive = client.get("/task-types?include_inactive=true", headers=auth(writer_token)).json()
    assert [t["name"] for t in inactive["items"]] == ["media.transcode"]
    names = {t["name"] for t in client.get("/tools", headers=auth(writer_token)).json()["items"]}
    assert "media.transcode" not in names
    # The name stays taken; PUT makes it active again.
    again = client.post("/task-types", json=TRANSCODE, headers=auth(admin_token))
    assert again.status_code == 409
    assert "inactive" in again.json()["detail"]
    assert client.delete("/task-types/never", headers=auth(admin_token)).status_code == 404


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("log", 409),  # a built-in
        ("http.fetch", 409),  # a built-in's namespace
        ("events.publish", 409),
        ("Media.transcode", 422),  # uppercase
        ("media..transcode", 422),
        ("media.transcode.", 422),
        (".media", 422),
        ("media transcode", 422),
        ("9media", 422),
        ("a" * 129, 422),
    ],
)
def test_names_and_collisions(
    client: TestClient, admin_token: str, db: psycopg.Connection[Any], name: str, status: int
) -> None:
    before = snapshot(db)
    resp = client.post("/task-types", json={**TRANSCODE, "name": name}, headers=auth(admin_token))
    assert resp.status_code == status, resp.text
    assert snapshot(db) == before


def test_taken_name_is_409(client: TestClient, admin_token: str) -> None:
    create_type(client, admin_token)
    resp = client.post("/task-types", json=TRANSCODE, headers=auth(admin_token))
    assert resp.status_code == 409
    assert "PUT /task-types/media.transcode" in resp.json()["detail"]


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _chain(links: int) -> dict[str, Any]:
    defs: dict[str, Any] = {"d0": {"type": "string"}}
    for i in range(1, links):
        defs[f"d{i}"] = {"anyOf": [{"$ref": f"#/$defs/d{i - 1}"}, {"$ref": f"#/$defs/d{i - 1}"}]}
    return {
        "type": "object",
        "properties": {"x": {"$ref": f"#/$defs/d{links - 1}"}},
        "$defs": defs,
    }


HOSTILE: list[tuple[str, Any, str]] = [
    ("not a schema", {"type": "objekt"}, "parameters_schema"),
    ("not an object schema", {"type": "string"}, "parameters_schema.type"),
    ("a list", [1, 2], "parameters_schema"),
    (
        "remote $ref",
        {"type": "object", "properties": {"a": {"$ref": "https://evil.example/s.json"}}},
        "parameters_schema.properties.a.$ref",
    ),
    ("relative $ref", {"type": "object", "$ref": "other.json#/x"}, "parameters_schema.$ref"),
    ("$id", {"type": "object", "$id": "https://evil.example/"}, "parameters_schema.$id"),
    ("dangling $ref", {"type": "object", "$ref": "#/$defs/nope"}, "parameters_schema.$ref"),
    ("$ref loop", {"type": "object", "$ref": "#"}, "parameters_schema"),
    (
        "backtracking pattern",
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=a)a"}}},
        "parameters_schema.properties.a.pattern",
    ),
    (
        "backreference",
        {"type": "object", "patternProperties": {"(a)\\1": {}}},
        "parameters_schema.patternProperties.(a)\\1",
    ),
    ("too deep", _deep(20), "parameters_schema"),
    ("exponential refs", _chain(30), "parameters_schema"),
    (
        "big",
        {"type": "object", "description": "x" * (65 * 1024)},
        "parameters_schema",
    ),
]


@pytest.mark.parametrize(("what", "schema", "field"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_schemas_are_refused(
    client: TestClient,
    admin_token: str,
    db: psycopg.Connection[Any],
    what: str,
    schema: Any,
    field: str,
) -> None:
    before = snapshot(db)
    resp = client.post(
        "/task-types", json={**TRANSCODE, "parameters_schema": schema}, headers=auth(admin_token)
    )
    assert resp.status_code == 422, resp.text
    fields = [e["field"] for e in resp.json()["errors"]]
    assert any(f.startswith(field) for f in fields), fields
    assert snapshot(db) == before


def test_a_megabyte_schema_is_refused(
    client: TestClient, admin_token: str, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    schema = {"type": "object", "description": "x" * (1024 * 1024)}
    for path, method in (("/task-types", "post"), ("/task-types/media.transcode", "put")):
        resp = client.request(
            method,
            path,
            content=json.dumps({**TRANSCODE, "parameters_schema": schema}),
            headers={**auth(admin_token), "Content-Type": "application/json"},
        )
        assert resp.status_code in (413, 422), resp.text
    assert snapshot(db) == before


def test_bad_output_schema_and_fields(
    client: TestClient, admin_token: str, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    for fields in (
        {"output_schema": {"$ref": "http://x/y"}},
        {"lease_seconds": 0},
        {"lease_seconds": 3601},
        {"cost_per_call": -1},
        {"cost_per_call": "1"},
        {"metadata": {"x": "y" * 20_000}},
    ):
        resp = client.post("/task-types", json={**TRANSCODE, **fields}, headers=auth(admin_token))
        assert resp.status_code == 422, (fields, resp.text)
    assert snapshot(db) == before


def test_tasks_using_a_type_are_checked(
    client: TestClient, admin_token: str, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    # Unknown until declared: 422 naming the step's uses.
    resp = client.post("/tasks", json=transcode_task(), headers=auth(writer_token))
    assert resp.status_code == 422
    error = resp.json()["errors"][0]
    assert error["field"] == "payload.pipeline[0].uses"
    assert "unknown or inactive task type" in error["message"]
    assert snapshot(db) == before

    create_type(client, admin_token)
    ok = client.post("/tasks", json=transcode_task(), headers=auth(writer_token))
    assert ok.status_code == 201, ok.text

    # The parameters are checked against parameters_schema, naming the field.
    bad = client.post("/tasks", json=transcode_task(width=2), headers=auth(writer_token))
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["payload.pipeline[0].with.width"]
    bad = client.post(
        "/tasks", json=transcode_task(url="ftp://x" + "a" * 50_000), headers=auth(writer_token)
    )
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["payload.pipeline[0].with.url"]
    # A lookup filled in at run time is not judged now.
    templated = transcode_task(width="${steps.x.width}")
    templated["payload"]["pipeline"].insert(0, {"id": "x", "uses": "log", "with": {"message": "m"}})
    assert client.post("/tasks", json=templated, headers=auth(writer_token)).status_code == 201

    # Inactive: refused at create, as unknown.
    assert (
        client.delete("/task-types/media.transcode", headers=auth(admin_token)).status_code == 204
    )
    resp = client.post("/tasks", json=transcode_task(), headers=auth(writer_token))
    assert resp.status_code == 422
    assert "unknown or inactive task type" in resp.json()["errors"][0]["message"]


def test_a_type_made_elsewhere_is_seen_at_once(
    client: TestClient, admin_token: str, writer_token: str, app_factory: Callable[[], Any]
) -> None:
    """Two API processes over one database: a type declared through one is usable through
    the other at once (a payload naming an unknown tool loads the types again)."""
    with TestClient(app_factory()) as other:
        # The other process has loaded the (empty) list of types already.
        assert other.get("/tools", headers=auth(writer_token)).status_code == 200
        create_type(client, admin_token)
        resp = other.post("/tasks", json=transcode_task(), headers=auth(writer_token))
        assert resp.status_code == 201, resp.text
        # And a change made through the first reaches the second (notification or cache).
        assert (
            client.delete("/task-types/media.transcode", headers=auth(admin_token)).status_code
            == 204
        )
        until(
            lambda: (
                other.post("/tasks", json=transcode_task(), headers=auth(writer_token)).status_code
                == 422
            ),
            "the other API to see the type inactive",
            timeout=10,
            every=0.2,
        )


def test_agent_task_types_are_set_by_admins(
    client: TestClient, admin_token: str, make_token: Callable[..., str]
) -> None:
    make_token("work:claim", name="encoder")
    agents = client.get("/agents", headers=auth(admin_token)).json()["items"]
    encoder = next(a for a in agents if a["name"] == "encoder")
    assert encoder["task_types"] is None
    assert encoder["scopes"] == ["work:claim"]
    resp = client.put(
        f"/agents/{encoder['id']}",
        json={"task_types": ["media.transcode", "gpu.render"]},
        headers=auth(admin_token),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["task_types"] == ["gpu.render", "media.transcode"]
    bad = client.put(
        f"/agents/{encoder['id']}", json={"task_types": ["Bad Name"]}, headers=auth(admin_token)
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "task_types[0]"
    cleared = client.put(
        f"/agents/{encoder['id']}", json={"task_types": None}, headers=auth(admin_token)
    )
    assert cleared.json()["task_types"] is None
