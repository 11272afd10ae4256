"""What a run records when an MCP server fails: any agent may read a run, the operator's
command lines and servers' stderr are for the log and for admins only."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.mcp import McpHub
from pao.tools import McpServerConfig
from worker.http_tool import Allow, ToolFailed
from worker.pipeline import StepCall
from worker.tools import Toolbox

ROOT = Path(__file__).resolve().parents[2]
PROBE = str(ROOT / "tests" / "mcp_probe.py")


async def _no_log(level: str, message: str) -> None:
    return None


def _call() -> StepCall:
    return StepCall("ask", "1:ask", _no_log)


def _errors(db_url: str, servers: dict[str, McpServerConfig], tool: str) -> list[str]:
    """The step errors a worker's toolbox gives for two calls of `tool` on `probe`."""

    async def go() -> list[str]:
        hub = McpHub(servers, connect_timeout=5)
        # The MCP tools never touch the database; the pool stays closed.
        pool: AsyncConnectionPool[db.Conn] = AsyncConnectionPool(db_url, open=False)
        box = Toolbox(pool, run_id=uuid.uuid4(), allow=Allow.parse(()), mcp=hub)
        found: list[str] = []
        try:
            for _ in range(2):
                with pytest.raises(ToolFailed) as err:
                    await box("probe." + tool)({}, _call())
                found.append(err.value.message)
        finally:
            await hub.close()
        return found

    return asyncio.run(go())


def test_a_crashed_server_is_named_in_the_run_but_its_stderr_and_command_are_logged(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    servers = {"probe": McpServerConfig(command=["python", PROBE], cwd=str(ROOT))}
    with caplog.at_level(logging.WARNING, logger="worker.tools"):
        errors = _errors(db_url, servers, "crash")
    for error in errors:
        assert "MCP server 'probe' went away" in error
        assert "crashing on request" not in error  # the server's stderr
        assert PROBE not in error
        assert str(ROOT) not in error
    assert "crashing on request" in caplog.text  # the operator still learns why


def test_a_server_that_cannot_start_is_named_but_not_how_it_is_run(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    servers = {
        "probe": McpServerConfig(command=["definitely-not-a-program", "--token=s3cret"], cwd="/")
    }
    with caplog.at_level(logging.WARNING, logger="worker.tools"):
        errors = _errors(db_url, servers, "whoami")
    for error in errors:
        assert "MCP server 'probe' is not available" in error
        assert "s3cret" not in error
        assert "definitely-not-a-program" not in error
    assert "definitely-not-a-program" in caplog.text


def test_a_tools_own_error_reaches_the_run(db_url: str) -> None:
    async def go() -> str:
        hub = McpHub({"probe": McpServerConfig(command=["python", PROBE])}, connect_timeout=5)
        pool: AsyncConnectionPool[db.Conn] = AsyncConnectionPool(db_url, open=False)
        box = Toolbox(pool, run_id=uuid.uuid4(), allow=Allow.parse(()), mcp=hub)
        try:
            with pytest.raises(ToolFailed) as err:
                await box("probe.fail")({"message": "the printer is on fire"}, _call())
        finally:
            await hub.close()
        return err.value.message

    assert "the printer is on fire" in asyncio.run(go())
