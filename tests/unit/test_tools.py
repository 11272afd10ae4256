"""Tool registry and tools file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pao.errors import PaoError
from pao.tools import (
    BUILTIN_TOOLS,
    McpServerConfig,
    ToolRegistry,
    ToolsFileError,
    ToolSpec,
    UnknownTool,
    load_tools_file,
)

GOOD = {
    "servers": {
        "weather-mcp": {"command": ["python", "-m", "x"], "env": {"K": "v"}, "cwd": "/srv"},
        "telegram-mcp": {"url": "http://127.0.0.1:9000/mcp", "headers": {"X-Key": "k"}},
    }
}


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "tools.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def registry() -> ToolRegistry:
    return ToolRegistry(
        {
            "weather-mcp": McpServerConfig(command=["python", "-m", "x"]),
            "telegram-mcp": McpServerConfig(url="http://127.0.0.1:9000/mcp"),
        }
    )


# Built-ins --------------------------------------------------------------------


def test_builtin_names() -> None:
    names = [t.name for t in ToolRegistry.builtin().list_tools()]
    assert names == ["events.publish", "http.request", "log", "sleep"]


@pytest.mark.parametrize("spec", BUILTIN_TOOLS, ids=lambda s: s.name)
def test_builtin_schemas_are_strict_and_valid(spec: ToolSpec) -> None:
    Draft202012Validator.check_schema(spec.input_schema)
    assert spec.input_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert spec.input_schema["additionalProperties"] is False
    assert spec.input_schema["required"]
    assert spec.server is None
    assert len(spec.description) > 40


def _valid(name: str, args: Any) -> bool:
    spec = ToolRegistry.builtin().require(name)
    validator = Draft202012Validator(
        spec.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return validator.is_valid(args)


@pytest.mark.parametrize(
    ("name", "args", "ok"),
    [
        ("http.request", {"url": "https://example.com/a?b=1"}, True),
        ("http.request", {"url": "http://127.0.0.1:8080", "method": "POST", "json": [1]}, True),
        ("http.request", {"url": "https://x.y", "headers": {"A": "b"}, "body": "hi"}, True),
        ("http.request", {"url": "https://x.y", "timeout_seconds": 60, "max_bytes": 10}, True),
        ("http.request", {}, False),
        ("http.request", {"url": "ftp://example.com"}, False),
        ("http.request", {"url": "file:///etc/passwd"}, False),
        ("http.request", {"url": "https://"}, False),
        ("http.request", {"url": "https://x.y", "method": "TRACE"}, False),
        ("http.request", {"url": "https://x.y", "headers": {"A": 1}}, False),
        ("http.request", {"url": "https://x.y", "timeout_seconds": 0}, False),
        ("http.request", {"url": "https://x.y", "timeout_seconds": 61}, False),
        ("http.request", {"url": "https://x.y", "json": {}, "body": ""}, False),
        ("http.request", {"url": "https://x.y", "extra": 1}, False),
        ("events.publish", {"type": "weather.checked", "payload": {"a": 1}}, True),
        ("events.publish", {"type": "a:b/c-d_e"}, True),
        ("events.publish", {"type": "has space"}, False),
        ("events.publish", {"type": ""}, False),
        ("events.publish", {"type": "x" * 201}, False),
        ("events.publish", {"type": "a", "payload": []}, False),
        ("log", {"message": "hi", "level": "warning"}, True),
        ("log", {"message": "hi", "level": "fatal"}, False),
        ("log", {"level": "info"}, False),
        ("sleep", {"seconds": 0}, True),
        ("sleep", {"seconds": 2.5}, True),
        ("sleep", {"seconds": 3601}, False),
        ("sleep", {"seconds": -1}, False),
        ("sleep", {"seconds": "ten"}, False),
    ],
)
def test_builtin_schema_examples(name: str, args: Any, ok: bool) -> None:
    assert _valid(name, args) is ok


# Resolving --------------------------------------------------------------------


def test_resolve_builtin() -> None:
    spec = registry().resolve("http.request")
    assert spec is not None
    assert spec.name == "http.request"


def test_undiscovered_server_accepts_any_tool_without_schema() -> None:
    spec = registry().resolve("weather-mcp.forecast")
    assert spec is not None
    assert spec.server == "weather-mcp"
    assert spec.name == "weather-mcp.forecast"
    assert spec.input_schema == {}


def test_undeclared_server_message() -> None:
    reg = registry()
    assert reg.resolve("slack-mcp.post") is None
    with pytest.raises(UnknownTool) as exc:
        reg.require("slack-mcp.post")
    assert exc.value.message == (
        "MCP server 'slack-mcp' is not declared in PAO_TOOLS_FILE, and 'slack-mcp.post' is an "
        "unknown or inactive task type (GET /task-types lists the active ones); declare the "
        "server there, create the task type, or use one of the built-in tools: "
        "events.publish, http.request, log, sleep"
    )
    assert isinstance(exc.value, PaoError)


@pytest.mark.parametrize(
    ("uses", "hint"),
    [
        ("http.get", "unknown built-in tool 'http.get'"),
        ("log.info", "unknown built-in tool"),
        ("sleep.x", "unknown built-in tool"),
        ("curl", "unknown tool 'curl'"),
        ("", "unknown tool ''"),
        ("weather-mcp.", "unknown tool"),
        (".x", "unknown tool"),
    ],
)
def test_unknown_tools(uses: str, hint: str) -> None:
    with pytest.raises(UnknownTool, match=hint):
        registry().require(uses)


def test_discovered_tools_are_checked_and_listed() -> None:
    reg = registry()
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    reg.add_server_tools(
        "weather-mcp",
        [
            ToolSpec("forecast", "Forecast for a city.", schema),
            ToolSpec("weather-mcp.alerts", "Alerts.", {}),
        ],
    )
    assert reg.is_discovered("weather-mcp")
    assert not reg.is_discovered("telegram-mcp")
    spec = reg.require("weather-mcp.forecast")
    assert spec == ToolSpec(
        "weather-mcp.forecast", "Forecast for a city.", schema, "weather-mcp", kind="mcp"
    )
    with pytest.raises(UnknownTool, match=r"has no tool 'nope'; its tools are: weather-mcp.alerts"):
        reg.require("weather-mcp.nope")
    # Other declared servers are still open until discovered.
    assert reg.resolve("telegram-mcp.anything") is not None
    assert [t.name for t in reg.list_tools()] == [
        "events.publish",
        "http.request",
        "log",
        "sleep",
        "weather-mcp.alerts",
        "weather-mcp.forecast",
    ]


def test_add_tools_for_undeclared_server_is_refused() -> None:
    with pytest.raises(ValueError, match="not declared"):
        registry().add_server_tools("ghost", [])


# Tools file -------------------------------------------------------------------


def test_no_tools_file_means_no_servers() -> None:
    assert load_tools_file(None) == {}
    assert ToolRegistry.from_tools_file(None).servers == {}


def test_good_tools_file(tmp_path: Path) -> None:
    servers = load_tools_file(write(tmp_path, GOOD))
    assert set(servers) == {"weather-mcp", "telegram-mcp"}
    weather = servers["weather-mcp"]
    assert weather.command == ["python", "-m", "x"]
    assert weather.env == {"K": "v"}
    assert weather.cwd == "/srv"
    assert weather.transport == "stdio"
    telegram = servers["telegram-mcp"]
    assert telegram.url == "http://127.0.0.1:9000/mcp"
    assert telegram.headers == {"X-Key": "k"}
    assert telegram.transport == "http"
    reg = ToolRegistry.from_tools_file(write(tmp_path, GOOD))
    assert reg.resolve("telegram-mcp.send_message") is not None


def test_empty_servers_is_fine(tmp_path: Path) -> None:
    assert load_tools_file(write(tmp_path, {"servers": {}})) == {}
    assert load_tools_file(write(tmp_path, {})) == {}


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.json")
    with pytest.raises(ToolsFileError, match=rf"tools file {path}: cannot read it"):
        load_tools_file(path)


def test_bad_json(tmp_path: Path) -> None:
    path = write(tmp_path, '{"servers": {,}}')
    with pytest.raises(ToolsFileError, match=r"tools\.json: invalid JSON at line 1 column 14"):
        load_tools_file(path)


@pytest.mark.parametrize(
    ("server", "hint"),
    [
        ({"command": ["x"], "url": "http://h/mcp"}, "exactly one of 'command'"),
        ({}, "exactly one of 'command'"),
        ({"command": []}, r"servers\.s\.command"),
        ({"command": [""]}, "program name"),
        ({"command": "python -m x"}, r"servers\.s\.command: Input should be a valid list"),
        ({"url": "ftp://h"}, r"servers\.s\.url"),
        ({"url": "http://h", "env": {"A": "b"}}, "'env' and 'cwd' apply to 'command'"),
        ({"command": ["x"], "headers": {"A": "b"}}, "'headers' apply to 'url'"),
        ({"command": ["x"], "env": {"A": 1}}, r"servers\.s\.env\.A"),
        ({"command": ["x"], "args": ["y"]}, r"servers\.s\.args: Extra inputs"),
    ],
)
def test_bad_server_entries(tmp_path: Path, server: dict[str, Any], hint: str) -> None:
    path = write(tmp_path, {"servers": {"s": server}})
    with pytest.raises(ToolsFileError, match=hint) as exc:
        load_tools_file(path)
    assert path in exc.value.message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ToolsFileError, match="mcpServers: Extra inputs"):
        load_tools_file(write(tmp_path, {"mcpServers": {}}))


def test_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(ToolsFileError, match="tools file"):
        load_tools_file(write(tmp_path, "[1, 2]"))


@pytest.mark.parametrize("name", ["http", "events", "log", "sleep"])
def test_reserved_server_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, {"servers": {name: {"command": ["x"]}}})
    with pytest.raises(ToolsFileError, match=f"server name '{name}' is reserved"):
        load_tools_file(path)


@pytest.mark.parametrize("name", ["a.b", "", "x" * 65, "sp ace", "é"])
def test_invalid_server_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, {"servers": {name: {"command": ["x"]}}})
    with pytest.raises(ToolsFileError, match="is invalid; use 1-64 letters"):
        load_tools_file(path)
