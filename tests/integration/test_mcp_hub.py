"""The MCP hub against real servers (the SDK's FastMCP), over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pao.mcp import McpCallFailed, McpHub, McpUnavailable
from pao.tools import McpServerConfig, load_tools_file
from tests.acceptance.procs import free_port
from tests.helpers import port_open, until

ROOT = Path(__file__).resolve().parents[2]
PROBE = str(ROOT / "tests" / "mcp_probe.py")
DEMO = ROOT / "ops" / "mcp-demo"

STDIO = McpServerConfig(command=["python", PROBE])


def run(body: Callable[[McpHub], Awaitable[None]], servers: dict[str, McpServerConfig]) -> None:
    """Run `body` with a hub over `servers`, and always close the hub."""

    async def go() -> None:
        hub = McpHub(servers, connect_timeout=5)
        try:
            await body(hub)
        finally:
            await hub.close()

    asyncio.run(go())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; only a reaped process is really gone.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def _pid(value: Any) -> int:
    assert isinstance(value, dict)
    pid = value["pid"]
    assert isinstance(pid, int)
    return pid


class HttpProbe:
    """The probe server over streamable HTTP, in a process the test can kill and restart."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = tmp / "probe-http.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, PROBE, "--http", str(self.port)], stdout=out, stderr=out
            )
        proc = self.proc

        def listening() -> bool:
            assert proc.poll() is None, self.log.read_text()
            return port_open(self.port)

        until(listening, "the HTTP probe to listen", 15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def http_probe(tmp_path: Path) -> Iterator[HttpProbe]:
    probe = HttpProbe(tmp_path)
    probe.start()
    try:
        yield probe
    finally:
        probe.kill()


def test_tools_are_listed_with_their_schemas() -> None:
    async def body(hub: McpHub) -> None:
        tools = {t.name: t for t in await hub.list_tools("probe")}
        assert {"probe.whoami", "probe.slow", "probe.fail", "probe.crash"} <= set(tools)
        slow = tools["probe.slow"]
        assert slow.server == "probe"
        assert slow.description == "Answer after `seconds`."
        assert slow.input_schema["required"] == ["seconds"]
        assert slow.input_schema["properties"]["seconds"]["type"] == "number"

    run(body, {"probe": STDIO})


def test_one_stdio_process_serves_every_call_even_concurrent_ones() -> None:
    async def body(hub: McpHub) -> None:
        first = await asyncio.gather(*(hub.call_tool("probe", "whoami", {}) for _ in range(5)))
        later = await hub.call_tool("probe", "whoami", {})
        assert len({_pid(v) for v in [*first, later]}) == 1
        assert _pid(later) != os.getpid()

    run(body, {"probe": STDIO})


def test_results_become_json() -> None:
    async def body(hub: McpHub) -> None:
        # Structured content as it is; a lone JSON text parsed; other text wrapped.
        assert await hub.call_tool("probe", "slow", {"seconds": 0}) == {"slept": 0}
        assert await hub.call_tool("probe", "plain", {"text": '[1, {"a": 2}]'}) == [1, {"a": 2}]
        assert await hub.call_tool("probe", "plain", {"text": "hello"}) == {"text": "hello"}

    run(body, {"probe": STDIO})


def test_a_tool_error_names_server_tool_and_message() -> None:
    async def body(hub: McpHub) -> None:
        with pytest.raises(McpCallFailed) as err:
            await hub.call_tool("probe", "fail", {"message": "the printer is on fire"})
        assert "'probe.fail'" in err.value.message
        assert "the printer is on fire" in err.value.message
        with pytest.raises(McpCallFailed, match="Unknown tool: nope"):
            await hub.call_tool("probe", "nope", {})
        # The session is fine afterwards.
        assert await hub.call_tool("probe", "slow", {"seconds": 0}) == {"slept": 0}

    run(body, {"probe": STDIO})


def test_a_server_that_dies_is_started_again_on_the_next_call() -> None:
    async def body(hub: McpHub) -> None:
        before = _pid(await hub.call_tool("probe", "whoami", {}))
        with pytest.raises(McpCallFailed) as err:
            await hub.call_tool("probe", "crash", {})
        assert "went away" in err.value.message
        assert "crashing on request" in err.value.message  # its stderr, quoted
        after = _pid(await hub.call_tool("probe", "whoami", {}))
        assert after != before
        assert not _alive(before)
        assert _pid(await hub.call_tool("probe", "whoami", {})) == after

    run(body, {"probe": STDIO})


def test_a_timeout_or_a_cancelled_call_leaves_the_session_working() -> None:
    async def body(hub: McpHub) -> None:
        pid = _pid(await hub.call_tool("probe", "whoami", {}))
        with pytest.raises(McpCallFailed, match=r"did not answer within 0\.2s"):
            await hub.call_tool("probe", "slow", {"seconds": 5}, timeout_seconds=0.2)
        # What a step's timeout does: cancel the caller.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await hub.call_tool("probe", "slow", {"seconds": 5})
        started = time.monotonic()
        assert await hub.call_tool("probe", "slow", {"seconds": 0.05}) == {"slept": 0.05}
        assert time.monotonic() - started < 2
        assert _pid(await hub.call_tool("probe", "whoami", {})) == pid

    run(body, {"probe": STDIO})


def test_closing_the_hub_stops_stdio_servers() -> None:
    pids: list[int] = []

    async def body(hub: McpHub) -> None:
        pids.append(_pid(await hub.call_tool("probe", "whoami", {})))
        assert _alive(pids[0])

    run(body, {"probe": STDIO})
    assert not _alive(pids[0])


def test_stdio_servers_run_with_declared_env_and_cwd_and_pao_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_VALUE", "inherited")
    (tmp_path / "tools").mkdir()
    (tmp_path / "work").mkdir()
    tools = tmp_path / "tools" / "tools.json"
    config = {"command": ["python", PROBE], "cwd": "../work", "env": {"PROBE_VALUE": "42"}}
    tools.write_text(
        json.dumps({"servers": {"probe": config, "here": {"command": ["python", PROBE]}}})
    )
    servers = load_tools_file(str(tools))

    async def body(hub: McpHub) -> None:
        me = await hub.call_tool("probe", "whoami", {})
        assert isinstance(me, dict)
        # "python" is pao's own interpreter, whatever else is on PATH.
        assert me["executable"] == sys.executable
        assert me["cwd"] == str(tmp_path / "work")
        assert me["value"] == "42"
        here = await hub.call_tool("here", "whoami", {})
        assert isinstance(here, dict)
        assert here["cwd"] == str(tmp_path / "tools")
        assert here["value"] is None  # only what the tools file declares, not ours

    run(body, servers)


def test_stdio_servers_get_no_secrets_of_pao_only_a_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a worker or API process holds: none of it is for the tools it starts.
    monkeypatch.setenv("DATABASE_URL", "postgresql://pao:secret@db/pao")
    monkeypatch.setenv("PAO_ADMIN_TOKEN", "pao_" + "x" * 38)
    monkeypatch.setenv("PAO_TOOLS_FILE", str(tmp_path / "tools.json"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "Europe/Chisinau")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    declared = {"PROBE_VALUE": "42", "API_KEY": "for-this-server"}
    servers = {"probe": McpServerConfig(command=["python", PROBE], env=declared)}

    async def body(hub: McpHub) -> None:
        env = await hub.call_tool("probe", "environment", {})
        assert isinstance(env, dict)
        leaked = sorted(k for k in env if k.startswith("PAO_") or k == "AWS_SECRET_ACCESS_KEY")
        assert "DATABASE_URL" not in env
        assert leaked == []
        assert {k: env.get(k) for k in declared} == declared
        # What a program needs to behave: locale, time zone, temp and home directories.
        assert env["LANG"] == "C.UTF-8"
        assert env["LC_TIME"] == "C"
        assert env["TZ"] == "Europe/Chisinau"
        assert env["TMPDIR"] == str(tmp_path)
        assert env["HOME"] == str(tmp_path)
        assert str(env["PATH"]).split(os.pathsep)[0] == os.path.dirname(sys.executable)

    run(body, servers)


def test_unreachable_servers_say_which_and_what_to_check(tmp_path: Path) -> None:
    servers = {
        "missing": McpServerConfig(command=["/nonexistent/server"]),
        "typo": McpServerConfig(command=["python", "no_such_server.py"], cwd=str(tmp_path)),
        "silent": McpServerConfig(command=["python", "-c", "import time; time.sleep(30)"]),
        "nobody": McpServerConfig(url=f"http://127.0.0.1:{free_port()}/mcp"),
    }

    async def body(hub: McpHub) -> None:
        hub.connect_timeout = 1
        for name, expected in [
            ("missing", "no such program or directory: /nonexistent/server"),
            ("typo", "no_such_server.py"),
            ("silent", "did not finish the MCP handshake within 1s"),
            ("nobody", "check that the server is running and the URL is right"),
        ]:
            started = time.monotonic()
            with pytest.raises(McpUnavailable) as err:
                await hub.list_tools(name)
            assert f"MCP server {name!r}" in err.value.message
            assert expected in err.value.message, err.value.message
            assert time.monotonic() - started < 3

    run(body, servers)


def test_http_sessions_are_reused(http_probe: HttpProbe) -> None:
    async def body(hub: McpHub) -> None:
        pids = await asyncio.gather(*(hub.call_tool("probe", "whoami", {}) for _ in range(3)))
        assert {_pid(p) for p in pids} == {http_probe.proc.pid if http_probe.proc else 0}
        assert {t.name for t in await hub.list_tools("probe")} >= {"probe.whoami"}
        with pytest.raises(McpCallFailed, match="boom"):
            await hub.call_tool("probe", "fail", {"message": "boom"})
        assert await hub.call_tool("probe", "slow", {"seconds": 0}) == {"slept": 0}

    run(body, {"probe": McpServerConfig(url=http_probe.url)})


def test_an_http_server_that_went_away_is_reconnected(http_probe: HttpProbe) -> None:
    async def body(hub: McpHub) -> None:
        first = _pid(await hub.call_tool("probe", "whoami", {}))
        http_probe.kill()
        with pytest.raises(McpUnavailable, match="cannot connect"):
            await hub.call_tool("probe", "whoami", {})
        http_probe.start()
        second = _pid(await hub.call_tool("probe", "whoami", {}))
        assert second != first
        # Restarted behind our back: the old session is unknown to the new process,
        # which refuses it, so the call is sent again on a new session.
        http_probe.kill()
        http_probe.start()
        third = _pid(await hub.call_tool("probe", "whoami", {}))
        assert third not in (first, second)

    run(body, {"probe": McpServerConfig(url=http_probe.url)})


def test_the_demo_servers_answer_over_both_transports(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "forecast.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "forecast.py", "--http", str(port)], cwd=DEMO, stdout=out, stderr=out
        )
    try:
        until(lambda: port_open(port), "the forecast server to listen", 15)
        servers = {
            **load_tools_file(str(DEMO / "tools.json")),
            "weather-http": McpServerConfig(url=f"http://127.0.0.1:{port}/mcp"),
        }

        async def body(hub: McpHub) -> None:
            for server in ("weather-mcp", "weather-http"):
                out = await hub.call_tool(server, "forecast", {"city": "Chisinau"})
                assert out == {
                    "city": "Chisinau",
                    "summary": "Chisinau: 3°C, light snow",
                    "high_c": 3,
                    "low_c": -2,
                    "conditions": "light snow",
                }
            other = await hub.call_tool("weather-mcp", "forecast", {"city": "Tokyo"})
            assert other == await hub.call_tool("weather-http", "forecast", {"city": "Tokyo"})

        run(body, servers)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
