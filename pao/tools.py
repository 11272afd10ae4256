"""The tool registry: what a pipeline step may name in `uses`.

Built-in tools ship with strict JSON Schemas so a bad argument is caught when the
task is created, not at 3 a.m. when it runs. MCP servers are declared by the
operator in the tools file (``PAO_TOOLS_FILE``); their tools are discovered by
connecting to them (`pao.mcp`) and recorded with `add_server_tools`. Until a server
is discovered, any tool name on it resolves to a spec without a schema: the API
discovers a server before it checks a payload naming it, while the worker, which
only runs payloads already checked, never needs to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pao.costs import CostError, parse_cost
from pao.errors import PaoError
from pao.vocabulary import Scope

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_.:/-]{1,200}$"
SERVER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
RESERVED_NAMESPACES = frozenset({"http", "events", "log", "sleep"})
"""Names of built-ins (and their prefixes) that an MCP server may not shadow."""


class ToolsFileError(PaoError):
    """The tools file (PAO_TOOLS_FILE) is missing or invalid."""


class UnknownTool(PaoError):
    """A step's `uses` names no built-in tool and no declared MCP server."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool as listed by `GET /tools`; `name` is exactly what a step writes in `uses`."""

    name: str
    description: str
    input_schema: dict[str, Any]
    server: str | None = None
    # The scope a task's owner must hold for a step to use this tool, and the scope each
    # of these arguments needs when a step gives it: checked when the task is written and
    # again when the step runs (scopes can be taken away). An admin holds every scope.
    required_scope: str | None = None
    argument_scopes: tuple[tuple[str, str], ...] = ()
    # builtin, mcp (a tool of an MCP server of the tools file) or remote (a task type: done
    # by an agent outside pao that claims it over HTTP; see pao.domain.task_types).
    kind: str = "builtin"
    # What one call costs (None: free): PAO_TOOL_COSTS for a built-in, the tools file's
    # `cost_per_call` for an MCP tool, the task type's for a remote one.
    cost_per_call: Decimal | None = None

    def scopes_needed(self, args: Mapping[str, object]) -> list[tuple[str, str | None]]:
        """What the owner of a step calling this tool with `args` must hold: each scope with
        the argument that needs it (None: the tool itself), in order."""
        needed: list[tuple[str, str | None]] = []
        if self.required_scope:
            needed.append((self.required_scope, None))
        needed += [(scope, name) for name, scope in self.argument_scopes if name in args]
        return needed


def _object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "$schema": SCHEMA_DIALECT,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_HTTP_REQUEST = ToolSpec(
    name="http.request",
    description=(
        "Make one HTTP request and return {status, headers, body, json}. 'json' is the "
        "parsed response when it is JSON, otherwise null. Send a JSON body with 'json', "
        "raw text with 'body', or an asset's content with 'body_asset' (one of them). Only "
        "http:// and https:// URLs; hosts may be "
        "restricted by the operator (PAO_HTTP_ALLOW). A non-2xx status does not fail the "
        "step: check ${steps.<id>.status} in a later step's 'if'. With 'save_body' a 2xx "
        "response's body is stored as an asset of the task's owner (streamed, up to "
        "PAO_ASSET_MAX_BYTES) and the result has {status, headers, url, asset_id, filename, "
        "media_type, size, sha256} instead of the body: pass ${steps.<id>.asset_id} on."
    ),
    input_schema={
        **_object_schema(
            {
                "method": {
                    "type": "string",
                    "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
                    "default": "GET",
                    "description": "HTTP method.",
                },
                "url": {
                    "type": "string",
                    "format": "uri",
                    # Host, then nothing or a path/query/fragment: the two repeats cannot
                    # share a character, so a check never backtracks (a host run followed
                    # by `[^\s]*` tried every split: seconds for 64 KiB). Bounded like
                    # maxLength, so even a longer string costs no more than 4 KiB of work.
                    "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]{1,2048}(?:[/?#]\S{0,2048})?$",
                    "maxLength": 2048,
                    "description": "Absolute http:// or https:// URL.",
                },
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Request headers; values are strings.",
                },
                "json": {"description": "Any JSON value, sent as the JSON request body."},
                "body": {"type": "string", "description": "Raw text request body."},
                "body_asset": {
                    "type": "string",
                    "format": "asset",
                    "description": (
                        "An asset's id (one of the task owner's): its content is the request "
                        "body, streamed (Content-Length its size, Content-Type its media type "
                        "unless 'headers' gives one), up to PAO_ASSET_MAX_BYTES."
                    ),
                },
                "timeout_seconds": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 3600,
                    "default": 30,
                    "description": (
                        "Give up after this many seconds: at most 60, or 3600 with save_body "
                        "or body_asset."
                    ),
                },
                "max_bytes": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 10_485_760,
                    "default": 1_048_576,
                    "description": "Read at most this many bytes of the response body.",
                },
                "save_body": {
                    "type": "boolean",
                    "default": False,
                    "description": (
                        "Store a 2xx response's body as an asset (owned by the task's "
                        "owner, listed on the run) instead of returning it; capped by "
                        "PAO_ASSET_MAX_BYTES and the owner's quota, not by max_bytes."
                    ),
                },
            },
            ["url"],
        ),
        "not": {"required": ["json", "body"]},
        "allOf": [
            {"not": {"required": ["json", "body_asset"]}},
            {"not": {"required": ["body", "body_asset"]}},
            {
                "not": {
                    "properties": {"save_body": {"const": True}},
                    "required": ["save_body", "max_bytes"],
                }
            },
            {
                # A file going either way may take longer than a call.
                "if": {
                    "anyOf": [
                        {"properties": {"save_body": {"const": True}}, "required": ["save_body"]},
                        {"required": ["body_asset"]},
                    ]
                },
                "else": {"properties": {"timeout_seconds": {"maximum": 60}}},
            },
        ],
    },
)

UUID_PATTERN = r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$"

_EVENTS_PUBLISH = ToolSpec(
    name="events.publish",
    description=(
        "Publish an event that can trigger event tasks whose pattern matches 'type' "
        "(e.g. 'weather.checked'). 'payload' becomes ${event.payload} in those tasks. "
        "It reaches the task owner's own event tasks; 'audience' (\"*\" or agent ids, "
        "needs the events:broadcast scope) reaches other agents' too. Needs the "
        "events:publish scope. Returns {event_id}."
    ),
    required_scope=Scope.EVENTS_PUBLISH,
    argument_scopes=(("audience", Scope.EVENTS_BROADCAST),),
    input_schema=_object_schema(
        {
            "type": {
                "type": "string",
                "pattern": EVENT_TYPE_PATTERN,
                "description": "Event type: 1-200 of letters, digits and _ . : / -",
            },
            "payload": {
                "type": "object",
                "default": {},
                "description": "Free JSON object delivered with the event.",
            },
            "audience": {
                "oneOf": [
                    {"const": "*"},
                    {
                        "type": "array",
                        "items": {"type": "string", "pattern": UUID_PATTERN},
                        "maxItems": 1000,
                    },
                ],
                "description": (
                    'Whose event tasks it reaches besides the owner\'s: "*" for every '
                    "agent's, or a list of agent ids. Needs the events:broadcast scope."
                ),
            },
        },
        ["type"],
    ),
)

_LOG = ToolSpec(
    name="log",
    description=(
        "Write a message to the run's log, visible in GET /runs/{id}. Use it to record "
        "what a pipeline decided. Returns {logged: true}."
    ),
    input_schema=_object_schema(
        {
            "message": {"type": "string", "description": "Text to log."},
            "level": {
                "type": "string",
                "enum": ["debug", "info", "warning", "error"],
                "default": "info",
                "description": "Log level.",
            },
        },
        ["message"],
    ),
)

_SLEEP = ToolSpec(
    name="sleep",
    description=(
        "Wait before the next step, e.g. to respect a rate limit. Counts against the "
        "step's timeout. Returns {slept_seconds}."
    ),
    input_schema=_object_schema(
        {
            "seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": 3600,
                "description": "How long to wait, 0 to 3600 seconds.",
            }
        },
        ["seconds"],
    ),
)

BUILTIN_TOOLS: tuple[ToolSpec, ...] = (_EVENTS_PUBLISH, _HTTP_REQUEST, _LOG, _SLEEP)


# Tools file -------------------------------------------------------------------


class McpServerConfig(BaseModel):
    """How to reach one MCP server: a local command (stdio) or a URL (HTTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    command: list[str] | None = Field(default=None, min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = Field(default=None, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://\S+$")
    headers: dict[str, str] = Field(default_factory=dict)
    # What one call of its tools costs: one number for every tool, or {tool: number} (a
    # tool left out is free). Numbers or their text; checked by `cost_of_tool`.
    cost_per_call: int | float | str | dict[str, int | float | str] | None = None

    @field_validator("command")
    @classmethod
    def _no_empty_args(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value[0]:
            raise ValueError("the program name (first item) must not be empty")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "give exactly one of 'command' (a local stdio server) or 'url' (an HTTP server)"
            )
        if self.url is not None and (self.env or self.cwd is not None):
            raise ValueError("'env' and 'cwd' apply to 'command' servers only")
        if self.command is not None and self.headers:
            raise ValueError("'headers' apply to 'url' servers only")
        return self

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def cost_of_tool(self, tool: str) -> Decimal | None:
        """What one call of `tool` (its name on this server) costs; None: free."""
        declared = self.cost_per_call
        if isinstance(declared, dict):
            declared = declared.get(tool)
        if declared is None:
            return None
        return parse_cost(declared, f"cost_per_call of {tool!r}")

    def check_costs(self) -> None:
        """CostError unless every cost it declares is one."""
        declared = self.cost_per_call
        if isinstance(declared, dict):
            for tool in declared:
                self.cost_of_tool(tool)
        elif declared is not None:
            parse_cost(declared, "cost_per_call")


class _ToolsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    servers: dict[str, McpServerConfig] = Field(default_factory=dict)


def load_tools_file(path: str | None) -> dict[str, McpServerConfig]:
    """Read and check the tools file; no file means no MCP servers."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ToolsFileError(
            f"tools file {path}: cannot read it ({exc.strerror or exc}); "
            "fix PAO_TOOLS_FILE or create the file"
        ) from None
    except UnicodeDecodeError:
        raise ToolsFileError(f"tools file {path}: is not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ToolsFileError(
            f"tools file {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    try:
        parsed = _ToolsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ToolsFileError(
            f'tools file {path}: {problems}. Expected {{"servers": {{"<name>": '
            '{"command": [...]} or {"url": "http://..."}}}'
        ) from None
    for name in parsed.servers:
        if not re.fullmatch(SERVER_NAME_PATTERN, name):
            raise ToolsFileError(
                f"tools file {path}: server name {name!r} is invalid; use 1-64 letters, "
                "digits, '_' or '-'"
            )
        if name in RESERVED_NAMESPACES:
            raise ToolsFileError(
                f"tools file {path}: server name {name!r} is reserved for built-in tools; "
                "rename the server"
            )
    for name, config in parsed.servers.items():
        try:
            config.check_costs()
        except CostError as exc:
            raise ToolsFileError(f"tools file {path}: servers.{name}.{exc.message}") from None
    # A stdio server runs in the tools file's directory unless it says otherwise, and
    # a relative `cwd` is read from there too, wherever pao itself was started.
    base = os.path.dirname(os.path.abspath(path))
    servers: dict[str, McpServerConfig] = {}
    for name, config in parsed.servers.items():
        if config.command is not None:
            cwd = os.path.normpath(os.path.join(base, config.cwd or "."))
            config = config.model_copy(update={"cwd": cwd})
        servers[name] = config
    return servers


# Registry ---------------------------------------------------------------------


class ToolRegistry:
    """Built-in tools plus the MCP servers of the tools file and their discovered tools."""

    def __init__(
        self,
        servers: Mapping[str, McpServerConfig] | None = None,
        *,
        builtins: Iterable[ToolSpec] = BUILTIN_TOOLS,
        costs: Iterable[tuple[str, Decimal]] = (),
    ) -> None:
        self._builtins: dict[str, ToolSpec] = {t.name: t for t in builtins}
        for name, cost in costs:
            if name not in self._builtins:
                raise ToolsFileError(
                    f"PAO_TOOL_COSTS names {name!r}, which is not a built-in tool; built-in "
                    f"tools are: {', '.join(sorted(self._builtins))} (an MCP tool's cost goes "
                    "in the tools file, a task type's in its cost_per_call)"
                )
            self._builtins[name] = dataclasses.replace(self._builtins[name], cost_per_call=cost)
        self._servers: dict[str, McpServerConfig] = dict(servers or {})
        self._discovered: dict[str, dict[str, ToolSpec]] = {}
        # Active task types, as last loaded from the database (pao.domain.task_types keeps them
        # fresh), and when: time.monotonic(), or None when they must be loaded again.
        self._remote: dict[str, ToolSpec] = {}
        self.remote_loaded_at: float | None = None

    @classmethod
    def builtin(cls) -> ToolRegistry:
        return cls()

    @classmethod
    def from_tools_file(
        cls, path: str | None, costs: Iterable[tuple[str, Decimal]] = ()
    ) -> ToolRegistry:
        return cls(load_tools_file(path), costs=costs)

    def cost_of(self, uses: str) -> Decimal | None:
        """What one call of the tool `uses` names costs, as declared now; None: free or
        unknown. A task type's comes from the registry's last load of the types (the worker
        reads a type's own row when it offers the step)."""
        spec = self._builtins.get(uses)
        if spec is not None:
            return spec.cost_per_call
        remote = self._remote.get(uses)
        server, dot, tool = uses.partition(".")
        config = self._servers.get(server) if dot else None
        if config is not None:
            return config.cost_of_tool(tool)
        return remote.cost_per_call if remote is not None else None

    @property
    def servers(self) -> dict[str, McpServerConfig]:
        return dict(self._servers)

    def is_discovered(self, server: str) -> bool:
        return server in self._discovered

    def add_server_tools(self, server: str, tools: Iterable[ToolSpec]) -> None:
        """Record the tools a declared server offers, replacing any earlier list.

        A spec may be named ``<server>.<tool>`` or just ``<tool>``; it is stored under
        the full name with `server` set, which is what `uses` must say.
        """
        if server not in self._servers:
            raise ValueError(f"MCP server {server!r} is not declared in the tools file")
        found: dict[str, ToolSpec] = {}
        prefix = server + "."
        for spec in tools:
            name = spec.name if spec.name.startswith(prefix) else prefix + spec.name
            found[name] = dataclasses.replace(
                spec,
                name=name,
                server=server,
                kind="mcp",
                cost_per_call=self._servers[server].cost_of_tool(name[len(prefix) :]),
            )
        self._discovered[server] = found

    def set_remote(self, specs: Iterable[ToolSpec], *, loaded_at: float) -> list[str]:
        """Replace the task types a step may name; returns the names left out because a
        built-in or a declared MCP server owns them (refused when a type is created, but an
        operator may declare a server later)."""
        remote: dict[str, ToolSpec] = {}
        shadowed: list[str] = []
        for spec in specs:
            if self.owner_of(spec.name) is not None:
                shadowed.append(spec.name)
            else:
                remote[spec.name] = dataclasses.replace(spec, kind="remote", server=None)
        self._remote = remote  # one assignment: readers on other threads see old or new
        self.remote_loaded_at = loaded_at
        return shadowed

    def forget_remote(self) -> None:
        """The task types changed somewhere: load them again before the next check."""
        self.remote_loaded_at = None

    def remote_names(self) -> frozenset[str]:
        return frozenset(self._remote)

    def owner_of(self, name: str) -> str | None:
        """What besides task types owns `name`: "builtin" for a built-in tool or a name in a
        built-in's namespace, "mcp" for a name on a declared MCP server, else None."""
        if name in self._builtins:
            return "builtin"
        server, dot, _ = name.partition(".")
        builtin_spaces = RESERVED_NAMESPACES | {n.split(".")[0] for n in self._builtins}
        if server in builtin_spaces:
            return "builtin"
        if dot and server in self._servers:
            return "mcp"
        return None

    def mcp_uses(self, payload: object) -> dict[str, list[str]]:
        """The declared MCP servers a payload's steps name, each with the `uses` naming it.

        In the order of the steps, each once. The API discovers these servers
        before it checks the payload.
        """
        steps = payload.get("pipeline") if isinstance(payload, Mapping) else None
        found: dict[str, list[str]] = {}
        for step in steps if isinstance(steps, list) else []:
            uses = step.get("uses") if isinstance(step, Mapping) else None
            if isinstance(uses, str) and uses not in self._builtins:
                server, dot, tool = uses.partition(".")
                if dot and tool and server in self._servers:
                    named = found.setdefault(server, [])
                    if uses not in named:
                        named.append(uses)
        return found

    def knows(self, uses: str) -> bool:
        """True if `uses` is a built-in, an active task type or a tool its (discovered) MCP
        server listed."""
        if uses in self._builtins or uses in self._remote:
            return True
        return uses in self._discovered.get(uses.partition(".")[0], {})

    def list_tools(self) -> list[ToolSpec]:
        """Built-ins, discovered MCP tools and active task types, sorted by name."""
        tools = list(self._builtins.values()) + list(self._remote.values())
        for found in self._discovered.values():
            tools.extend(found.values())
        return sorted(tools, key=lambda t: t.name)

    def resolve(self, uses: str) -> ToolSpec | None:
        """The tool `uses` names, or None. Undiscovered servers yield a schema-less spec."""
        try:
            return self.require(uses)
        except UnknownTool:
            return None

    def require(self, uses: str) -> ToolSpec:
        """Like `resolve`, but the error says what to write instead."""
        if uses in self._builtins:
            return self._builtins[uses]
        builtin_names = ", ".join(sorted(self._builtins))
        server, dot, tool = uses.partition(".")
        if uses in self._remote and (not dot or server not in self._servers):
            return self._remote[uses]
        if not dot or not server or not tool:
            raise UnknownTool(
                f"unknown tool {uses!r}: no built-in tool, and an unknown or inactive task "
                f"type; use a built-in tool ({builtin_names}), '<server>.<tool>' for an MCP "
                "server declared in PAO_TOOLS_FILE, or an active task type (GET /task-types)"
            )
        if server in RESERVED_NAMESPACES or server in {n.split(".")[0] for n in self._builtins}:
            raise UnknownTool(
                f"unknown built-in tool {uses!r}; built-in tools are: {builtin_names}"
            )
        if server not in self._servers:
            raise UnknownTool(
                f"MCP server {server!r} is not declared in PAO_TOOLS_FILE, and {uses!r} is an "
                "unknown or inactive task type (GET /task-types lists the active ones); "
                "declare the server there, create the task type, or use one of the built-in "
                f"tools: {builtin_names}"
            )
        found = self._discovered.get(server)
        if found is None:
            return ToolSpec(
                name=uses,
                description=f"Tool {tool!r} on MCP server {server!r} (not yet discovered).",
                input_schema={},
                server=server,
                kind="mcp",
                cost_per_call=self._servers[server].cost_of_tool(tool),
            )
        if uses not in found:
            names = ", ".join(sorted(found)) or "none"
            raise UnknownTool(f"MCP server {server!r} has no tool {tool!r}; its tools are: {names}")
        return found[uses]
