"""MCP tools through the API and a worker: discovery, payload checks, and the morning briefing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.settings import Settings
from tests.acceptance.procs import free_port
from tests.background import worker
from tests.helpers import SEED_TASK, auth, snapshot, until

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "ops" / "mcp-demo"

# The seed task of DESIGN.md: the forecast, then a message with its summary.
BRIEFING: dict[str, Any] = {
    **SEED_TASK,
    "payload": {
        "pipeline": [
            {
                "id": "weather",
                "uses": "weather-mcp.forecast",
                "with": {"city": "Chisinau"},
                "save_as": "weather",
            },
            {
                "id": "notify",
                "uses": "telegram-mcp.send_message",
                "with": {"chat_id": 12345, "text": "${steps.weather.summary}"},
            },
        ]
    },
}


def demo_tools_file(tmp_path: Path, **extra: dict[str, Any]) -> tuple[Path, Path]:
    """The demo tools file, its servers run from ops/mcp-demo, the sink in `tmp_path`."""
    sink = tmp_path / "sink.jsonl"
    servers: dict[str, Any] = json.loads((DEMO / "tools.json").read_text())["servers"]
    for config in servers.values():
        config["cwd"] = str(DEMO)
        config["env"] = {"PAO_DEMO_SINK": str(sink)}
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"servers": {**servers, **extra}}))
    return path, sink


# A stdio server that dies at once, saying something only an operator should read.
CRASHING = {
    "command": ["python", "-c", "import sys; sys.exit('crashing: sk-operator-only')"],
}


@pytest.fixture
def sink(tmp_path: Path) -> Path:
    return demo_tools_file(
        tmp_path,
        down={"url": f"http://127.0.0.1:{free_port()}/mcp"},
        crashing=CRASHING,
    )[1]


@pytest.fixture
def settings(tmp_path: Path, sink: Path) -> Settings:
    return Settings(pool_min_size=1, pool_max_size=4, tools_file=str(tmp_path / "tools.json"))


def _briefing(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(BRIEFING))
    for index, step in changes.items():
        body["payload"]["pipeline"][int(index.removeprefix("step"))].update(step)
    return body


def test_tools_lists_discovered_mcp_tools_with_their_schemas(
    client: TestClient, writer_token: str
) -> None:
    resp = client.get("/tools", headers=auth(writer_token))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    tools = {t["name"]: t for t in body["items"]}
    assert {"log", "http.request", "weather-mcp.forecast", "telegram-mcp.send_message"} <= set(
        tools
    )
    forecast = tools["weather-mcp.forecast"]
    assert forecast["server"] == "weather-mcp"
    assert "forecast" in forecast["description"]
    assert forecast["input_schema"]["properties"]["city"]["type"] == "string"
    assert forecast["input_schema"]["required"] == ["city"]
    send = tools["telegram-mcp.send_message"]["input_schema"]
    assert send["properties"]["chat_id"]["type"] == "integer"
    servers = {s["name"]: s for s in body["servers"]}
    assert servers["weather-mcp"]["reachable"] is True
    assert servers["weather-mcp"]["transport"] == "stdio"
    assert servers["weather-mcp"]["tools"] == 1
    assert servers["down"]["reachable"] is False
    assert servers["down"]["error"] is None  # why: for admins (below)


def test_only_admins_see_how_servers_are_run_and_why_they_fail(
    client: TestClient, writer_token: str, admin_token: str
) -> None:
    def servers(token: str) -> dict[str, dict[str, Any]]:
        resp = client.get("/tools", headers=auth(token))
        assert resp.status_code == 200, resp.text
        return {s["name"]: s for s in resp.json()["servers"]}

    admin = servers(admin_token)
    # An admin sees the command, its stderr and the reason, to fix the tools file.
    assert admin["crashing"]["reachable"] is False
    assert "sk-operator-only" in admin["crashing"]["error"]
    assert "python -c" in admin["crashing"]["error"]
    assert "check that the server is running" in admin["down"]["error"]
    # Anyone else: only whether each server works.
    mine = servers(writer_token)
    for name, server in mine.items():
        assert server["error"] is None, server
        assert server["reachable"] is admin[name]["reachable"], name
        assert server["tools"] == admin[name]["tools"], name
    assert mine["weather-mcp"]["reachable"] is True
    assert mine["crashing"]["reachable"] is False


def test_the_briefing_is_accepted(client: TestClient, writer_token: str) -> None:
    resp = client.post("/tasks", json=BRIEFING, headers=auth(writer_token))
    assert resp.status_code == 201, resp.text
    assert resp.json()["payload"] == BRIEFING["payload"]


def test_an_unknown_tool_on_a_declared_server_is_a_422_listing_its_tools(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    resp = client.post(
        "/tasks", json=_briefing(step0={"uses": "weather-mcp.forcast"}), headers=auth(writer_token)
    )
    assert resp.status_code == 422, resp.text
    [error] = resp.json()["errors"]
    assert error["field"] == "payload.pipeline[0].uses"
    assert "no tool 'forcast'" in error["message"]
    assert "weather-mcp.forecast" in error["message"]
    assert snapshot(db) == before


def test_arguments_are_checked_against_the_tools_input_schema(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    resp = client.post(
        "/tasks",
        json=_briefing(
            step0={"with": {"city": 3}},
            step1={"with": {"text": "hi"}},
        ),
        headers=auth(writer_token),
    )
    assert resp.status_code == 422, resp.text
    errors = {e["field"]: e["message"] for e in resp.json()["errors"]}
    assert set(errors) == {"payload.pipeline[0].with.city", "payload.pipeline[1].with"}
    assert "not of type 'string'" in errors["payload.pipeline[0].with.city"]
    assert "'chat_id' is a required property" in errors["payload.pipeline[1].with"]
    assert "weather-mcp.forecast" in errors["payload.pipeline[0].with.city"]
    assert snapshot(db) == before
    # A lookup filled in at run time is not held against the schema.
    templated = _briefing(step1={"with": {"chat_id": "${steps.weather.high_c}", "text": "x"}})
    assert client.post("/tasks", json=templated, headers=auth(writer_token)).status_code == 201


def test_an_unreachable_server_is_a_503_and_nothing_changes(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    created = client.post("/tasks", json=BRIEFING, headers=auth(writer_token)).json()
    before = snapshot(db)
    down = _briefing(step1={"uses": "down.send_message"})
    headers = {**auth(writer_token), "Idempotency-Key": "briefing-1"}
    resp = client.post("/tasks", json=down, headers=headers)
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["Retry-After"]
    problem = resp.json()
    assert problem["type"] == "urn:pao:problem:tool-server-unavailable"
    assert "MCP server 'down'" in problem["detail"]
    assert "is not available" in problem["detail"]
    assert "nothing was stored" in problem["detail"]
    # How the server is run and what it said are for the operator's logs.
    crashing = client.post(
        "/tasks", json=_briefing(step1={"uses": "crashing.send"}), headers=auth(writer_token)
    )
    assert crashing.status_code == 503, crashing.text
    assert "MCP server 'crashing' is not available" in crashing.json()["detail"]
    assert "sk-operator-only" not in crashing.text
    assert "python" not in crashing.text
    assert problem["request_id"] == resp.headers["X-Request-ID"]
    changed = client.put(
        f"/tasks/{created['id']}", json={"payload": down["payload"]}, headers=auth(writer_token)
    )
    assert changed.status_code == 503, changed.text
    assert snapshot(db) == before
    # The key was not spent on the failure.
    again = client.post("/tasks", json=BRIEFING, headers=headers)
    assert again.status_code == 201, again.text


def _finished(client: TestClient, token: str, run_id: str) -> dict[str, Any]:
    """The run once it has ended."""

    def ended() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/runs/{run_id}", headers=auth(token)).json()
        return None if run["status"] in ("queued", "running") else run

    run: dict[str, Any] = until(ended, f"run {run_id} to end", 20)
    return run


def test_the_morning_briefing_runs_end_to_end(
    client: TestClient, writer_token: str, db_url: str, settings: Settings, sink: Path
) -> None:
    task = client.post("/tasks", json=BRIEFING, headers=auth(writer_token)).json()
    with worker(db_url, tools_file=settings.tools_file):
        resp = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token))
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["id"]
        run = _finished(client, writer_token, run_id)
    assert run["status"] == "succeeded", run
    weather, notify = run["steps"]
    assert weather["output"] == {
        "city": "Chisinau",
        "summary": "Chisinau: 3°C, light snow",
        "high_c": 3,
        "low_c": -2,
        "conditions": "light snow",
    }
    assert notify["input"] == {"chat_id": 12345, "text": "Chisinau: 3°C, light snow"}
    assert notify["output"] == {"message_id": 1}
    [line] = sink.read_text().splitlines()
    message = json.loads(line)
    assert message["chat_id"] == 12345
    assert message["text"] == "Chisinau: 3°C, light snow"


def test_a_failing_mcp_tool_fails_the_step_with_the_servers_message(
    client: TestClient, writer_token: str, db_url: str, settings: Settings, sink: Path
) -> None:
    body = _briefing(step1={"with": {"chat_id": "${steps.weather.summary}", "text": "x"}})
    task = client.post("/tasks", json={**body, "max_retries": 0}, headers=auth(writer_token))
    assert task.status_code == 201, task.text
    with worker(db_url, tools_file=settings.tools_file):
        run_id = client.post(
            f"/tasks/{task.json()['id']}/run_now", headers=auth(writer_token)
        ).json()["id"]
        run = _finished(client, writer_token, run_id)
    assert run["status"] == "failed", run
    assert run["steps"][0]["status"] == "succeeded"
    assert run["steps"][1]["status"] == "failed"
    assert "step notify: MCP tool 'telegram-mcp.send_message' reported an error" in run["error"]
    assert "chat_id" in run["error"]
    assert not sink.exists()
