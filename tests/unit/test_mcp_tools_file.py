"""The tools file as the MCP hub reads it: working directories and the servers a payload names."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from mcp import types

from pao.mcp import child_environment, describe, tool_output
from pao.tools import McpServerConfig, ToolRegistry, ToolSpec, load_tools_file


def test_cwd_is_read_from_the_tools_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "tools.json"
    path.write_text(
        json.dumps(
            {
                "servers": {
                    "none": {"command": ["python", "a.py"]},
                    "relative": {"command": ["python", "a.py"], "cwd": "../srv/tools"},
                    "absolute": {"command": ["python", "a.py"], "cwd": "/opt/x"},
                    "web": {"url": "http://127.0.0.1:9/mcp"},
                }
            }
        )
    )
    monkeypatch.chdir(tmp_path / "conf")  # a relative path to the file is made absolute
    servers = load_tools_file("tools.json")
    assert servers["none"].cwd == str(tmp_path / "conf")
    assert servers["relative"].cwd == str(tmp_path / "srv" / "tools")
    assert servers["absolute"].cwd == "/opt/x"
    assert servers["web"].cwd is None


def test_the_child_environment_puts_pao_python_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret@db/pao")
    monkeypatch.setenv("PAO_ADMIN_TOKEN", "pao_secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    config = McpServerConfig(command=["python"], env={"TOKEN": "t", "PATH": "/only/here"})
    env = child_environment(config)
    assert env["TOKEN"] == "t"
    assert env["PATH"] == os.path.dirname(sys.executable) + os.pathsep + "/only/here"
    assert env.get("HOME") == os.environ.get("HOME")
    assert env["LC_ALL"] == "C.UTF-8"
    assert "DATABASE_URL" not in env
    assert "PAO_ADMIN_TOKEN" not in env


def test_descriptions_name_the_command_or_url() -> None:
    stdio = McpServerConfig(command=["python", "my server.py"], cwd="/srv")
    assert describe("w", stdio) == "'w' (python 'my server.py' in /srv)"
    assert describe("t", McpServerConfig(url="http://h/mcp")) == "'t' (http://h/mcp)"
    secret = McpServerConfig(url="https://me:pw@h:8443/mcp?key=k")
    assert describe("s", secret) == "'s' (https://h:8443/mcp)"


def test_mcp_servers_and_tools_a_payload_names() -> None:
    reg = ToolRegistry(
        {
            "weather-mcp": McpServerConfig(command=["python"]),
            "telegram-mcp": McpServerConfig(url="http://h/mcp"),
        }
    )
    payload = {
        "pipeline": [
            {"id": "a", "uses": "telegram-mcp.send_message"},
            {"id": "b", "uses": "log"},
            {"id": "c", "uses": "weather-mcp.forecast"},
            {"id": "d", "uses": "telegram-mcp.other"},
            {"id": "e", "uses": "undeclared.tool"},
            {"id": "f", "uses": 3},
            "not a step",
        ]
    }
    assert reg.mcp_uses(payload) == {
        "telegram-mcp": ["telegram-mcp.send_message", "telegram-mcp.other"],
        "weather-mcp": ["weather-mcp.forecast"],
    }
    assert list(reg.mcp_uses(payload)) == ["telegram-mcp", "weather-mcp"]
    assert reg.mcp_uses({"pipeline": "nope"}) == {}
    assert reg.mcp_uses([1]) == {}
    assert not reg.knows("weather-mcp.forecast")
    reg.add_server_tools("weather-mcp", [ToolSpec("forecast", "", {})])
    assert reg.knows("weather-mcp.forecast")
    assert not reg.knows("weather-mcp.other")
    assert reg.knows("log")


def _result(*content: types.TextContent | types.ImageContent, **kw: object) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), **kw)


def test_tool_results_as_json() -> None:
    def text(t: str) -> types.TextContent:
        return types.TextContent(type="text", text=t)

    assert tool_output(_result(text("{}"), structuredContent={"a": 1})) == {"a": 1}
    assert tool_output(_result(text('{"b": [1, 2]}'))) == {"b": [1, 2]}
    assert tool_output(_result(text("42"))) == 42
    assert tool_output(_result(text("sunny"))) == {"text": "sunny"}
    assert tool_output(_result(text("a"), text("b"))) == {"text": "a\nb"}
    image = types.ImageContent(type="image", data="AAAA", mimeType="image/png")
    assert tool_output(_result(image)) == {"text": ""}
    assert tool_output(_result()) == {"text": ""}
