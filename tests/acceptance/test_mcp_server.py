"""`pao mcp` over stdio and streamable HTTP, driven by the official MCP SDK's client."""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from mcp import ClientSession, McpError, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import AnyUrl

from pao.db import connect
from pao.domain import claims
from pao.mcp_server import RESOURCE_MAX_BYTES, RESOURCE_PAGE, UPLOAD_MAX_BYTES
from tests.acceptance.procs import Process, free_port
from tests.acceptance.running import api_process, worker_process
from tests.helpers import auth, snapshot, until, until_async

TOOLS = {
    "create_task",
    "preview_task",
    "list_tasks",
    "get_task",
    "run_now",
    "pause",
    "resume",
    "snooze",
    "cancel",
    "list_runs",
    "get_run",
    "cancel_run",
    "publish_event",
    "list_task_types",
    "create_task_type",
    "claim_work",
    "heartbeat_claim",
    "complete_claim",
    "fail_claim",
    "get_usage",
    "set_agent_limits",
    "list_assets",
    "upload_asset",
    "asset_link",
    "delete_asset",
}
TASK = {
    "title": "MCP hello",
    "schedule_kind": "cron",
    "schedule_expr": "0 9 * * *",
    "timezone": "UTC",
    "payload": {"pipeline": [{"id": "hello", "uses": "log", "with": {"message": "hi from mcp"}}]},
}


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[str]:
    with api_process(db_url, tmp_path) as base:
        yield base


def _env(api: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PAO_TOKEN", "DATABASE_URL")}
    return {**env, "PAO_API_URL": api, **extra}


@asynccontextmanager
async def stdio_session(api: str, token: str, log: Path) -> AsyncIterator[ClientSession]:
    """A session with `pao mcp` started over stdio with PAO_TOKEN=token."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "pao", "mcp"], env=_env(api, PAO_TOKEN=token)
    )
    with log.open("a") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx.AsyncClient(headers=auth(token), timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, name: str, /, **args: Any) -> dict[str, Any]:
    """A tool call that must succeed; its structured result."""
    result = await session.call_tool(name, args)
    assert not result.isError, result.content
    assert result.structuredContent is not None
    # The text content carries the same JSON for clients that ignore structured output.
    [text] = result.content
    assert isinstance(text, types.TextContent)
    assert json.loads(text.text) == result.structuredContent
    return result.structuredContent


async def refused(session: ClientSession, name: str, /, **args: Any) -> str:
    """A tool call that must fail; its error text."""
    result = await session.call_tool(name, args)
    assert result.isError, result
    [text] = result.content
    assert isinstance(text, types.TextContent)
    return text.text


async def until_finished(session: ClientSession, run_id: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        run = await call(session, "get_run", run_id=run_id)
        return None if run["status"] in ("queued", "running") else run

    finished: dict[str, Any] = await until_async(ended, f"run {run_id} to end", 30, every=0.1)
    return finished


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def _agent_drives_pao(session: ClientSession) -> str:
    """List the tools, create a task, run it now, read the run; the task's id."""
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert tools.keys() == TOOLS
    create = tools["create_task"]
    assert create.inputSchema["required"] == ["title", "schedule_kind", "schedule_expr"]
    assert create.inputSchema["additionalProperties"] is False
    assert "tasks:write" in (create.description or "")
    assert tools["get_run"].annotations is not None
    assert tools["get_run"].annotations.readOnlyHint is True

    preview = await call(
        session, "preview_task", schedule_kind="cron", schedule_expr="0 9 * * *", count=2
    )
    assert len(preview["items"]) == 2
    task = await call(session, "create_task", **TASK)
    assert task["status"] == "active"
    listed = await call(session, "list_tasks")
    assert [t["id"] for t in listed["items"]] == [task["id"]]
    queued = await call(session, "run_now", task_id=task["id"])
    assert queued["status"] == "queued"
    run = await until_finished(session, queued["id"])
    assert run["status"] == "succeeded", run
    assert run["steps"][0]["output"] == {"logged": True}
    assert [line["message"] for line in run["logs"] if line["step_id"] == "hello"] == [
        "hi from mcp"
    ]
    runs = await call(session, "list_runs", task_id=task["id"])
    assert [r["id"] for r in runs["items"]] == [queued["id"]]
    paused = await call(session, "pause", task_id=task["id"])
    assert paused["status"] == "paused"
    resumed = await call(session, "resume", task_id=task["id"])
    assert resumed["status"] == "active"
    snoozed = await call(session, "snooze", task_id=task["id"], seconds=3600)
    assert _at(snoozed["next_run_at"]) > _at(resumed["next_run_at"])
    event = await call(session, "publish_event", type="mcp.ping", payload={"n": 1})
    assert event["queued"] == 0
    return str(task["id"])


def test_stdio_serves_the_agent_with_its_token_and_scopes(
    api: str,
    writer_token: str,
    make_token: Callable[..., str],
    db_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    reader_token = make_token("tasks:read", "runs:read", name="reader")

    async def go() -> None:
        async with stdio_session(api, writer_token, tmp_path / "mcp.log") as session:
            task_id = await _agent_drives_pao(session)
            bad = await refused(session, "create_task", **{**TASK, "schedule_expr": "61 * * * *"})
            assert "Invalid request (422)" in bad
            assert "- schedule_expr: cron minute value 61 is out of range" in bad
            extra = await refused(session, "create_task", **TASK, owner="someone")
            assert extra.startswith("Input validation error"), extra
            unknown = await refused(
                session, "get_task", task_id="00000000-0000-0000-0000-000000000000"
            )
            assert "Not found (404)" in unknown

        before = snapshot(db)
        async with stdio_session(api, reader_token, tmp_path / "mcp.log") as session:
            # The reader's own view: the writer's task does not exist for it.
            assert (await call(session, "list_tasks"))["items"] == []
            assert "Not found (404)" in await refused(session, "get_task", task_id=task_id)
            for name, args in (
                ("create_task", TASK),
                ("run_now", {"task_id": task_id}),
                ("publish_event", {"type": "mcp.ping"}),
            ):
                text = await refused(session, name, **args)
                assert text.startswith("Forbidden (403): this endpoint needs the '"), text
                assert "ask an admin for a token with that scope" in text
        assert snapshot(db) == before

    with worker_process(db_url, tmp_path):
        anyio.run(go)


def test_streamable_http_uses_each_request_s_own_token(
    api: str,
    writer_token: str,
    make_token: Callable[..., str],
    db_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    reader_token = make_token("tasks:read", "runs:read", name="reader")
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    server = Process(
        [sys.executable, "-m", "pao", "mcp", "--http", "--port", str(port)],
        _env(api),
        tmp_path / "mcp-http.log",
    )
    try:

        def up() -> httpx.Response | None:
            assert server.proc.poll() is None, server.output()
            try:
                return httpx.post(url, json={}, timeout=2)
            except httpx.TransportError:
                return None

        anonymous: httpx.Response = until(up, "pao mcp --http to listen")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in anonymous.json()["detail"]
        # Bound to loopback, it refuses pages from other hosts (DNS rebinding).
        rebound = httpx.post(url, json={}, headers={**auth(writer_token), "Host": "evil.example"})
        assert rebound.status_code == 421

        async def go() -> None:
            # Two agents on one server, at the same time: each acts as itself.
            async with (
                http_session(url, writer_token) as writer,
                http_session(url, reader_token) as reader,
            ):
                task_id = await _agent_drives_pao(writer)
                before = snapshot(db)
                assert (await call(reader, "list_tasks"))["items"] == []
                text = await refused(reader, "create_task", **TASK)
                assert "this endpoint needs the 'tasks:write' scope" in text
                text = await refused(reader, "cancel", task_id=task_id)
                assert "this endpoint needs the 'tasks:write' scope" in text
                text = await refused(reader, "get_task", task_id=task_id)
                assert "Not found (404)" in text
                assert snapshot(db) == before
                assert [t["id"] for t in (await call(writer, "list_tasks"))["items"]] == [task_id]

            async with http_session(url, "pao_not_a_real_token") as stranger:
                text = await refused(stranger, "list_tasks")
                assert text.startswith("Unauthenticated (401)")

        with worker_process(db_url, tmp_path):
            anyio.run(go)
    finally:
        server.kill()


def test_an_agent_defines_and_does_remote_work(
    api: str,
    writer_token: str,
    make_token: Callable[..., str],
    db_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """Over MCP an admin declares a task type, and an agent with work:claim claims its
    steps and completes or fails them."""
    admin_token = make_token("admin", name="root")
    claimer_token = make_token("work:claim", name="claimer")
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    step = {"id": "shout", "uses": "demo.shout", "with": {"text": "hi"}}

    async def go() -> None:
        async with stdio_session(api, admin_token, tmp_path / "mcp.log") as session:
            made = await call(
                session,
                "create_task_type",
                name="demo.shout",
                parameters_schema=schema,
                output_schema={"type": "object", "required": ["text"]},
            )
            assert (made["name"], made["is_active"]) == ("demo.shout", True)
            again = await refused(
                session, "create_task_type", name="demo.shout", parameters_schema={}
            )
            assert "(409)" in again or "(422)" in again
            listed = await call(session, "list_task_types")
            assert [t["name"] for t in listed["items"]] == ["demo.shout"]
            task = await call(session, "create_task", **{**TASK, "payload": {"pipeline": [step]}})
            run = await call(session, "run_now", task_id=task["id"])
        await _offer(db_url, run["id"], "shout", {"text": "hi"})
        await _offer(db_url, run["id"], "shout-2", {"text": "no"})

        async with stdio_session(api, claimer_token, tmp_path / "mcp.log") as session:
            first = (await call(session, "claim_work", task_type="demo.shout"))["items"]
            second = (await call(session, "claim_work", task_type="demo.shout"))["items"]
            assert [i["parameters"] for i in first + second] == [{"text": "hi"}, {"text": "no"}]
            beat = await call(session, "heartbeat_claim", claim_id=first[0]["claim_id"])
            assert beat["lease_expires_at"] >= first[0]["lease_expires_at"]
            bad = await refused(
                session, "complete_claim", claim_id=first[0]["claim_id"], output={"x": 1}
            )
            assert "(422)" in bad
            done = await call(
                session, "complete_claim", claim_id=first[0]["claim_id"], output={"text": "HI"}
            )
            assert done == {"claim_id": first[0]["claim_id"], "state": "succeeded"}
            failed = await call(
                session,
                "fail_claim",
                claim_id=second[0]["claim_id"],
                error="refuse",
                retryable=True,
            )
            assert failed["state"] == "failed"
            lost = await refused(
                session, "complete_claim", claim_id=first[0]["claim_id"], output={}
            )
            assert "(409)" in lost
            empty = await call(session, "claim_work", task_type="demo.shout", wait_seconds=0)
            assert empty == {"items": []}
            denied = await refused(
                session, "create_task_type", name="x.y", parameters_schema=schema
            )
            assert denied.startswith("Forbidden (403)"), denied

    anyio.run(go)
    rows = db.execute(
        "SELECT step_id, state, output, retryable FROM remote_steps ORDER BY id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [
        ("shout", "succeeded", {"text": "HI"}, None),
        ("shout-2", "failed", None, True),
    ]


async def _offer(db_url: str, run_id: str, step_id: str, params: dict[str, Any]) -> None:
    """Offer a step of the run as the worker will, committed."""
    conn = await connect(db_url)
    try:
        async with conn.transaction():
            await claims.offer_step(
                conn,
                run_id=uuid.UUID(run_id),
                step_index=0,
                step_id=step_id,
                task_type="demo.shout",
                parameters=params,
            )
    finally:
        await conn.close()


def test_an_admin_limits_an_agent_and_the_agent_sees_its_usage(
    api: str,
    writer_token: str,
    admin_token: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    row = db.execute("SELECT id FROM agents WHERE name = 'writer'").fetchone()
    assert row is not None
    writer_id = str(row[0])
    log = tmp_path / "mcp.log"

    async def go() -> None:
        async with stdio_session(api, writer_token, log) as session:
            task = await call(session, "create_task", **TASK)
            assert await call(session, "run_now", task_id=task["id"])
            # Its own limits are not its to set; another's usage does not exist for it.
            text = await refused(
                session, "set_agent_limits", agent_id=writer_id, max_runs_per_hour=9
            )
            assert text.startswith("Forbidden (403)"), text
            other = str(uuid.uuid4())
            assert "Not found (404)" in await refused(session, "get_usage", agent_id=other)
        async with stdio_session(api, admin_token, log) as admin:
            limited = await call(
                admin,
                "set_agent_limits",
                agent_id=writer_id,
                max_runs_per_hour=1,
                budget_per_day=12.3,
                timezone="America/New_York",
            )
            assert limited["max_runs_per_hour"] == 1
            assert limited["timezone"] == "America/New_York"
        async with stdio_session(api, writer_token, log) as session:
            usage = await call(session, "get_usage")
            assert usage["timezone"] == "America/New_York"
            assert usage["this_hour"]["max_runs"] == 1
            assert usage["today"]["budget"] == "12.3"
            # Runs are counted against the rate from when it is set.
            assert (await call(session, "run_now", task_id=task["id"]))["status"] == "queued"
            refusal = await refused(session, "run_now", task_id=task["id"])
            assert "(429)" in refusal, refusal
        async with stdio_session(api, admin_token, log) as admin:
            await call(admin, "set_agent_limits", agent_id=writer_id, max_runs_per_hour=None)
        async with stdio_session(api, writer_token, log) as session:
            assert (await call(session, "run_now", task_id=task["id"]))["status"] == "queued"

    anyio.run(go)


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


def test_assets_are_resources_and_tools(
    api: str,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """An agent's assets are resources it lists (paged) and reads (text, bytes, or a signed
    link past the cap); another agent's are not found; upload_asset is capped."""
    token = make_token("assets:read", "assets:write", "runs:read", name="filer")
    other = make_token("assets:read", "assets:write", name="other")
    blind = make_token("tasks:read", name="blind")
    big = bytes(range(256)) * (RESOURCE_MAX_BYTES // 256 + 1)
    resp = httpx.post(
        f"{api}/assets",
        files={"file": ("big.bin", big, "application/octet-stream")},
        headers=auth(token),
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    big_id = resp.json()["id"]
    log = tmp_path / "mcp.log"

    async def go() -> None:
        async with stdio_session(api, token, log) as session:
            png = await call(
                session,
                "upload_asset",
                filename="dot.png",
                content_base64=base64.b64encode(PNG).decode(),
                label="a dot",
                tags=["pics"],
            )
            assert (png["media_type"], png["size"]) == ("image/png", len(PNG))
            assert png["uri"] == f"pao://assets/{png['id']}"
            note = await call(
                session,
                "upload_asset",
                filename="note.md",
                content_base64=base64.b64encode("héllo\n".encode()).decode(),
                media_type="text/markdown",
            )
            listed = await call(session, "list_assets", tag="pics")
            assert [a["id"] for a in listed["items"]] == [png["id"]]

            # Resources: the list (newest first) and the template.
            found = await session.list_resources()
            assert [str(r.uri) for r in found.resources] == [
                note["uri"],
                png["uri"],
                f"pao://assets/{big_id}",
            ]
            assert found.nextCursor is None
            first = found.resources[1]
            assert (first.name, first.title, first.mimeType, first.size) == (
                "dot.png",
                "a dot",
                "image/png",
                len(PNG),
            )
            [template] = (await session.list_resource_templates()).resourceTemplates
            assert template.uriTemplate == "pao://assets/{id}"

            # Reads: bytes as base64, text as text, past the cap a signed link instead.
            [blob] = (await session.read_resource(AnyUrl(png["uri"]))).contents
            assert isinstance(blob, types.BlobResourceContents)
            assert (base64.b64decode(blob.blob), blob.mimeType) == (PNG, "image/png")
            [text] = (await session.read_resource(AnyUrl(note["uri"]))).contents
            assert isinstance(text, types.TextResourceContents)
            assert (text.text, text.mimeType) == ("héllo\n", "text/markdown")
            [linked] = (await session.read_resource(AnyUrl(f"pao://assets/{big_id}"))).contents
            assert isinstance(linked, types.TextResourceContents)
            assert f"more than the {RESOURCE_MAX_BYTES} this server returns inline" in linked.text
            assert linked.meta is not None
            url = linked.meta["pao/link"]
            assert url in linked.text
            assert linked.meta["pao/size"] == len(big)
            async with httpx.AsyncClient() as anonymous:
                assert (await anonymous.get(url)).content == big
            link = await call(session, "asset_link", asset_id=png["id"], expires_in=60)
            async with httpx.AsyncClient() as anonymous:
                assert (await anonymous.get(link["url"])).content == PNG

            # Bad input: refused, nothing stored.
            bad = await refused(
                session, "upload_asset", filename="x.bin", content_base64="not base64!"
            )
            assert "content_base64 is not base64" in bad
            for extra, said in ((1, "upload_asset takes at most"), (4, "Input validation")):
                too_big = base64.b64encode(b"x" * (UPLOAD_MAX_BYTES + extra)).decode()
                bad = await refused(
                    session, "upload_asset", filename="x.bin", content_base64=too_big
                )
                assert said in bad, bad
            lying = await refused(
                session,
                "upload_asset",
                filename="x.png",
                content_base64=base64.b64encode(b"<html>hi</html>").decode(),
                media_type="image/png",
            )
            assert "(422)" in lying
            with pytest.raises(McpError) as unknown:
                await session.read_resource(AnyUrl("pao://tasks/x"))
            assert "pao://assets/{id}" in unknown.value.error.message
            usage = await call(session, "get_usage")
            assert usage["asset_bytes"] == len(PNG) + len("héllo\n".encode()) + len(big)
            assert usage["today"]["asset_bytes_added"] == usage["asset_bytes"]

        before = snapshot(db)
        async with stdio_session(api, other, log) as session:
            # Another agent's assets: not listed, not found, not deletable.
            assert (await session.list_resources()).resources == []
            with pytest.raises(McpError) as hidden:
                await session.read_resource(AnyUrl(f"pao://assets/{big_id}"))
            assert hidden.value.error.code == -32002
            assert "Not found (404)" in hidden.value.error.message
            gone = await refused(session, "delete_asset", asset_id=big_id)
            assert "Not found (404)" in gone
            assert "Not found (404)" in await refused(session, "asset_link", asset_id=big_id)
        async with stdio_session(api, blind, log) as session:
            # Without assets:read there are no resources, and a read names the scope.
            assert (await session.list_resources()).resources == []
            with pytest.raises(McpError) as denied:
                await session.read_resource(AnyUrl(f"pao://assets/{big_id}"))
            assert "assets:read" in denied.value.error.message
        assert snapshot(db) == before

        # Paged: RESOURCE_PAGE at a time, following nextCursor.
        async with httpx.AsyncClient(base_url=api, headers=auth(other)) as http:
            for i in range(RESOURCE_PAGE + 1):
                files = {"file": (f"n{i}.txt", f"{i}".encode(), "text/plain")}
                assert (await http.post("/assets", files=files)).status_code == 201
        async with stdio_session(api, other, log) as session:
            page = await session.list_resources()
            assert len(page.resources) == RESOURCE_PAGE
            assert page.nextCursor is not None
            rest = await session.list_resources(
                params=types.PaginatedRequestParams(cursor=page.nextCursor)
            )
            assert [r.name for r in rest.resources] == ["n0.txt"]
            assert rest.nextCursor is None
            assert await call(session, "delete_asset", asset_id=str(rest.resources[0].uri)[13:])

    anyio.run(go)
