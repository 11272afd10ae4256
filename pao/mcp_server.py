"""`pao mcp`: the orchestrator as MCP tools, for agents that already speak MCP.

Every tool is one call to the public HTTP API through `pao.client`, made with
the calling agent's own token, so the API alone decides what the agent may see
and change (scopes, ownership, validation). Over stdio the token is the
server's (`PAO_TOKEN`); over streamable HTTP each HTTP request's own
`Authorization: Bearer` token is used for the calls it makes, so one server
can serve many agents, and a request without a token is refused with 401.

The API has no endpoint that tells a token its scopes, so every tool is listed
to every agent; a call its token may not make comes back as a tool error that
names the missing scope, and changes nothing.

The agent's assets are MCP resources (`pao://assets/{id}`, listed a page at a time,
and a template for any id): a read returns the content up to RESOURCE_MAX_BYTES,
and a signed link instead for a larger one, so no read fills an agent's context or
this server's memory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import logging
import math
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import anyio
import uvicorn
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import McpError
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pao.client import (
    ApiProblem,
    ApiUnreachable,
    Asset,
    InvalidId,
    PaoClient,
    api_url_from_env,
)
from pao.schemas import AgentUpdate, EventPublish, SchedulePreview, TaskCreate, TaskTypeCreate
from pao.vocabulary import RemoteStepState, RunStatus, ScheduleKind, TaskStatus
from pao.vocabulary import Scope as TokenScope

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
LOG_LINES = 100
"""Log lines `get_run` returns with a run (the first page; the CLI reads the rest)."""
RESOURCE_MAX_BYTES = 1 << 20
"""The largest asset whose content a resource read returns (1 MiB, before base64); a
larger one is answered with a signed link to it instead."""
UPLOAD_MAX_BYTES = 1 << 20
"""The largest file upload_asset takes (1 MiB once decoded from base64)."""
LINK_SECONDS = 900
"""How long the signed link a resource read gives for a large asset works."""
RESOURCE_PAGE = 50
"""Assets per page of resources/list."""
ASSET_URI = "pao://assets/{id}"
_ASSET_URI = re.compile(r"^pao://assets/([0-9a-fA-F-]{36})$")
RESOURCE_NOT_FOUND = -32002
"""The JSON-RPC error code MCP gives a resource that does not exist."""


class ToolFailed(Exception):
    """A tool call the API refused or could not answer; the text is for the agent."""


# Input schemas. The task and event shapes come from the same models the API
# validates with, so their limits cannot drift; the descriptions are written
# for an agent deciding what to send.

_UUID = {"type": "string", "format": "uuid"}
_TASK_ID = {**_UUID, "description": "the task's id, as create_task or list_tasks return it"}
_RUN_ID = {**_UUID, "description": "the run's id, as run_now or list_runs return it"}
_AGENT_ID = {**_UUID, "description": "the agent's id (GET /agents lists them)"}
_LIMITS = ("budget_per_day", "budget_per_month", "max_runs_per_hour", "timezone")
"""What an admin sets on an agent through set_agent_limits: its budgets, run rate and zone."""
_LIMIT = {
    "type": "integer",
    "minimum": 1,
    "maximum": 100,
    "default": 20,
    "description": "items per page",
}
_CURSOR = {
    "type": "string",
    "maxLength": 200,
    "description": "next_cursor from the previous page, to read the next one; omit for the first",
}
_IDEMPOTENCY_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "description": "optional; send the same key when retrying so the request takes effect once",
}

_FIELD_HELP = {
    "title": "short name people will see",
    "description": "what the task is for",
    "schedule_kind": (
        "cron: five-field cron, at most once a minute; rrule: RFC 5545 RRULE; once: one time; "
        "event: fires when a published event's type matches; condition: a cron saying how often "
        "to check, the pipeline's first step being the check"
    ),
    "schedule_expr": (
        "the schedule for schedule_kind, e.g. cron '30 8 * * 1-5'; rrule "
        "'FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30'; once '2026-12-01T09:00' "
        "(without an offset it is read in timezone); event 'github.push' or 'github.*'; "
        "condition '*/5 * * * *'"
    ),
    "timezone": "IANA zone the schedule is read in, e.g. 'Europe/Chisinau'; default: the server's",
    "payload": (
        'what runs: {"pipeline": [step, ...]}. A step is {"id": unique name, "uses": tool '
        "(built-ins: log, sleep, http.request, events.publish; or '<server>.<tool>' of a "
        'configured MCP server), "with": its arguments}, optionally "save_as", "if" (a '
        'guard such as \'${steps.check.count} > 3\') and "timeout_seconds". Inside "with", '
        "'${steps.<id>.<field>}' reads an earlier step's output and '${event.payload.<field>}' "
        'the triggering event. For condition tasks, "condition" is the guard on the first '
        "step's output."
    ),
    "priority": "1 runs first, 9 last",
    "dedupe_key": "occurrences with the same key within dedupe_window_seconds run once",
    "dedupe_window_seconds": "how long dedupe_key suppresses repeats; 0: no deduplication",
    "max_retries": "how often a failed run is tried again",
    "backoff_strategy": "the wait between retries",
    "misfire_grace_seconds": "how late an occurrence may still start after downtime",
    "count": "how many fire times to return",
}


_EVENT_HELP = {
    "type": "the event's type, e.g. 'github.push' (letters, digits and _ . : / -)",
    "payload": "any JSON object; event tasks read it as ${event.payload.<field>}",
    "audience": (
        "leave out to reach only your own event tasks; '*' (every agent's) or a list of "
        "agent ids reaches other agents' too, and needs the events:broadcast scope"
    ),
}


def _described(
    schema: dict[str, Any], help: Mapping[str, str], **extra: dict[str, Any]
) -> dict[str, Any]:
    """A model's JSON schema with agent-facing descriptions, no titles, and `extra` fields."""
    out = copy.deepcopy(schema)
    out.pop("title", None)
    for name, prop in out["properties"].items():
        prop.pop("title", None)
        if name in help:
            prop["description"] = help[name]
    out["properties"].update(extra)
    return out


def _object(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


Call = Callable[[PaoClient, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ToolDef:
    name: str
    scope: TokenScope
    description: str
    input_schema: dict[str, Any]
    call: Call
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False

    def tool(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            description=f"{self.description} Needs the '{self.scope}' scope.",
            inputSchema=self.input_schema,
            annotations=types.ToolAnnotations(
                readOnlyHint=self.read_only,
                destructiveHint=self.destructive,
                idempotentHint=self.idempotent or self.read_only,
                openWorldHint=False,
            ),
        )


def _task_body(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "idempotency_key"}


async def _create_task(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    task = await client.create_task(_task_body(args), idempotency_key=args.get("idempotency_key"))
    return dict(task)


async def _preview_task(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.preview(args))


async def _list_tasks(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(
        await client.list_tasks(
            status=args.get("status"),
            schedule_kind=args.get("schedule_kind"),
            limit=args.get("limit"),
            cursor=args.get("cursor"),
        )
    )


async def _get_task(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.get_task(args["task_id"]))


async def _run_now(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.run_now(args["task_id"]))


async def _pause(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.pause(args["task_id"]))


async def _resume(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.resume(args["task_id"]))


async def _snooze(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.snooze(args["task_id"], args["seconds"]))


async def _cancel(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.cancel(args["task_id"]))


async def _list_runs(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(
        await client.list_runs(
            task_id=args.get("task_id"),
            status=args.get("status"),
            limit=args.get("limit"),
            cursor=args.get("cursor"),
        )
    )


async def _get_run(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    run: dict[str, Any] = dict(await client.get_run(args["run_id"]))
    if args.get("include_logs", True):
        logs = await client.run_logs(args["run_id"], limit=LOG_LINES)
        run["logs"] = logs["items"]
        run["more_logs"] = logs["next_cursor"] is not None
    return run


async def _cancel_run(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.cancel_run(args["run_id"]))


async def _publish_event(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    accepted = await client.publish_event(
        args["type"],
        args.get("payload") or {},
        idempotency_key=args.get("idempotency_key"),
        audience=args.get("audience"),
    )
    return dict(accepted)


async def _list_task_types(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(
        await client.list_task_types(
            include_inactive=bool(args.get("include_inactive")),
            limit=args.get("limit"),
            cursor=args.get("cursor"),
        )
    )


async def _create_task_type(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.create_task_type(args))


async def _claim_work(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(
        await client.claim(
            args["task_type"],
            limit=args.get("limit", 1),
            wait_seconds=args.get("wait_seconds", CLAIM_WAIT_SECONDS),
        )
    )


async def _heartbeat_claim(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return await client.heartbeat(args["claim_id"])


async def _complete_claim(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    await client.complete(args["claim_id"], args["output"], args.get("cost"))
    return {"claim_id": args["claim_id"], "state": RemoteStepState.SUCCEEDED}


async def _fail_claim(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    await client.fail(args["claim_id"], args["error"], retryable=args.get("retryable", False))
    return {"claim_id": args["claim_id"], "state": RemoteStepState.FAILED}


async def _get_usage(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.usage(args.get("agent_id")))


async def _set_agent_limits(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    changes = {name: args[name] for name in _LIMITS if name in args}
    return await client.update_agent(args["agent_id"], changes)


def asset_uri(asset_id: str) -> str:
    return ASSET_URI.format(id=asset_id)


def _with_uri(asset: Asset) -> dict[str, Any]:
    """An asset as the tools return it: its fields and the resource URI that reads it."""
    return {**asset, "uri": asset_uri(asset["id"])}


async def _list_assets(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    page = await client.list_assets(
        tag=args.get("tag"),
        label=args.get("label"),
        media_type=args.get("media_type"),
        run_id=args.get("run_id"),
        task_id=args.get("task_id"),
        limit=args.get("limit"),
        cursor=args.get("cursor"),
    )
    return {"items": [_with_uri(a) for a in page["items"]], "next_cursor": page["next_cursor"]}


async def _upload_asset(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    try:
        data = base64.b64decode(args["content_base64"], validate=True)
    except (binascii.Error, ValueError):
        raise ToolFailed(
            "content_base64 is not base64 (RFC 4648, with padding); nothing was stored"
        ) from None
    if len(data) > UPLOAD_MAX_BYTES:
        raise ToolFailed(
            f"the file is {len(data)} bytes; upload_asset takes at most {UPLOAD_MAX_BYTES}. "
            "Upload larger files over HTTP (POST /assets) or with `pao assets upload`"
        )
    asset = await client.upload_asset_bytes(
        data,
        args["filename"],
        label=args.get("label", ""),
        tags=args.get("tags", ()),
        media_type=args.get("media_type"),
        run_id=args.get("run_id"),
    )
    return _with_uri(asset)


async def _asset_link(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.asset_link(args["asset_id"], args.get("expires_in", LINK_SECONDS)))


async def _delete_asset(client: PaoClient, args: dict[str, Any]) -> dict[str, Any]:
    await client.delete_asset(args["asset_id"])
    return {"id": args["asset_id"], "deleted": True}


def _limits_schema() -> dict[str, Any]:
    """The agent's limits as `PUT /agents/{id}` takes them, and whose they are."""
    schema = _described(AgentUpdate.model_json_schema(), {})
    fields = {name: schema["properties"][name] for name in _LIMITS}
    return {
        **_object({"agent_id": _AGENT_ID, **fields}, "agent_id"),
        "$defs": schema.get("$defs", {}),
    }


CLAIM_WAIT_SECONDS = 5
"""How long claim_work waits for a step by default: short, an agent's turn is waiting."""
_TASK_TYPE_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": "the task type's name, e.g. 'media.transcode' (list_task_types shows them)",
}
_CLAIM_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "description": "the claim_id claim_work returned for the step, exactly as given",
}
_TASK_TYPE_HELP = {
    "name": "lowercase letters, digits, '_' and '-', in parts joined by dots, e.g. "
    "'media.transcode'; steps name it in 'uses'",
    "description": "what the type does, for people and agents choosing a tool",
    "parameters_schema": "JSON Schema (Draft 2020-12) of a step's 'with'; its type must be "
    "'object'",
    "output_schema": "JSON Schema a completed step's output must match; omit for any object",
    "metadata": "any JSON object kept with the type",
    "lease_seconds": "how long a claim holds a step without a heartbeat (1-3600, default 60)",
    "cost_per_call": "what one step of this type costs, for accounting",
    "is_active": "inactive types cannot be used by new tasks",
}

_TASK_STATUS = {
    "type": "string",
    "enum": [s.value for s in TaskStatus],
    "description": "only tasks in this state",
}
_RUN_STATUS = {
    "type": "string",
    "enum": [s.value for s in RunStatus],
    "description": "only runs in this state",
}

_ASSET_ID = {**_UUID, "description": "the asset's id, as list_assets or upload_asset return it"}
_TAG = {"type": "string", "minLength": 1, "maxLength": 64}
_MEDIA_TYPE = {"type": "string", "maxLength": 255}

TOOLS: tuple[ToolDef, ...] = (
    ToolDef(
        "create_task",
        TokenScope.TASKS_WRITE,
        "Create a task: a schedule plus a pipeline of tool steps that pao runs for you, "
        "unattended, at every occurrence. Returns the stored task; keep its `id` for the other "
        "tools and check `next_run_at`. Try the schedule with preview_task first. Invalid input "
        "(a bad expression, unknown zone or tool, a template naming a later step) is refused "
        'with each field named, and nothing is stored. Example: {"title": "Weekday hello", '
        '"schedule_kind": "cron", "schedule_expr": "30 8 * * 1-5", "payload": '
        '{"pipeline": [{"id": "hello", "uses": "log", "with": {"message": '
        '"good morning"}}]}}.',
        _described(TaskCreate.model_json_schema(), _FIELD_HELP, idempotency_key=_IDEMPOTENCY_KEY),
        _create_task,
    ),
    ToolDef(
        "preview_task",
        TokenScope.TASKS_READ,
        "Compute the next fire times of a schedule without storing anything: use it to check "
        "a cron, rrule or once expression (and its time zone) before create_task. Returns "
        "`items`, each with `at` (UTC) and `local` (wall time in the zone, with its offset).",
        _described(SchedulePreview.model_json_schema(), _FIELD_HELP),
        _preview_task,
        read_only=True,
    ),
    ToolDef(
        "list_tasks",
        TokenScope.TASKS_READ,
        "List your tasks, newest first (admins see every agent's). Returns `items` (tasks with "
        "`id`, `title`, `status`, `schedule_kind`, `schedule_expr`, `next_run_at`, …) and "
        "`next_cursor`; pass it back as `cursor` for the next page while it is not null.",
        _object(
            {
                "status": _TASK_STATUS,
                "schedule_kind": {
                    "type": "string",
                    "enum": [s.value for s in ScheduleKind],
                    "description": "only tasks with this kind of schedule",
                },
                "limit": _LIMIT,
                "cursor": _CURSOR,
            }
        ),
        _list_tasks,
        read_only=True,
    ),
    ToolDef(
        "get_task",
        TokenScope.TASKS_READ,
        "Read one task: its schedule, pipeline (`payload`), `status` and `next_run_at`.",
        _object({"task_id": _TASK_ID}, "task_id"),
        _get_task,
        read_only=True,
    ),
    ToolDef(
        "run_now",
        TokenScope.TASKS_WRITE,
        "Queue one run of a task right now, whatever its schedule; the schedule is untouched. "
        "Returns the queued run: poll get_run with its `id` until `status` is succeeded, "
        "failed, cancelled or timed_out.",
        _object({"task_id": _TASK_ID}, "task_id"),
        _run_now,
    ),
    ToolDef(
        "pause",
        TokenScope.TASKS_WRITE,
        "Pause a task: it stops firing until resume. Occurrences that fall due meanwhile are "
        "skipped. Returns the task.",
        _object({"task_id": _TASK_ID}, "task_id"),
        _pause,
        idempotent=True,
    ),
    ToolDef(
        "resume",
        TokenScope.TASKS_WRITE,
        "Resume a paused task: it fires again from now on; what fell due while it was paused "
        "is not replayed. Returns the task with its new `next_run_at`.",
        _object({"task_id": _TASK_ID}, "task_id"),
        _resume,
        idempotent=True,
    ),
    ToolDef(
        "snooze",
        TokenScope.TASKS_WRITE,
        "Delay a task's next execution by `seconds`; later occurrences keep their times. "
        "Returns the task with its new `next_run_at`.",
        _object(
            {
                "task_id": _TASK_ID,
                "seconds": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 366 * 86_400,
                    "description": "how long to delay, e.g. 3600 for an hour",
                },
            },
            "task_id",
            "seconds",
        ),
        _snooze,
    ),
    ToolDef(
        "cancel",
        TokenScope.TASKS_WRITE,
        "Cancel a task for good (it cannot be resumed): its queued work is dropped and a "
        "running run is stopped. To stop a single run instead, use cancel_run. Returns the task.",
        _object({"task_id": _TASK_ID}, "task_id"),
        _cancel,
        destructive=True,
        idempotent=True,
    ),
    ToolDef(
        "list_runs",
        TokenScope.RUNS_READ,
        "List runs (one per attempt at an occurrence), newest first, of your tasks. Returns "
        "`items` (each with `id`, `task_id`, `status`, `attempt`, `scheduled_for`, "
        "`duration_ms`, `error`) and `next_cursor` for the next page.",
        _object(
            {
                "task_id": {**_UUID, "description": "only runs of this task"},
                "status": _RUN_STATUS,
                "limit": _LIMIT,
                "cursor": _CURSOR,
            }
        ),
        _list_runs,
        read_only=True,
    ),
    ToolDef(
        "get_run",
        TokenScope.RUNS_READ,
        "Read one run: `status` (queued, running, succeeded, failed, cancelled, timed_out), "
        "timings, `error`, `steps` (each with its input, output or error), and its first "
        f"{LOG_LINES} log lines in `logs` (`more_logs` says whether there are more).",
        _object(
            {
                "run_id": _RUN_ID,
                "include_logs": {
                    "type": "boolean",
                    "default": True,
                    "description": "also return the run's log lines",
                },
            },
            "run_id",
        ),
        _get_run,
        read_only=True,
    ),
    ToolDef(
        "cancel_run",
        TokenScope.TASKS_WRITE,
        "Stop one run: a queued run is cancelled at once, a running one by its worker. The "
        "task keeps its schedule. Returns the run.",
        _object({"run_id": _RUN_ID}, "run_id"),
        _cancel_run,
        destructive=True,
        idempotent=True,
    ),
    ToolDef(
        "get_usage",
        TokenScope.RUNS_READ,
        "Your runs and what they cost today and this month (in your zone), your budgets and "
        "run rate, and what remains of them; the asset bytes you keep (`asset_bytes`) against "
        "`asset_quota_bytes`, and per window the bytes of kept assets created in it "
        "(`asset_bytes_added`); an admin may name another agent. When a budget is "
        "spent, run_now is refused until the window resets and scheduled occurrences are "
        "recorded as over_budget.",
        _object({"agent_id": _AGENT_ID}),
        _get_usage,
        read_only=True,
    ),
    ToolDef(
        "set_agent_limits",
        TokenScope.ADMIN,
        "Set an agent's budget_per_day, budget_per_month (money its runs' steps may be "
        "charged in a day or month of its timezone), max_runs_per_hour and timezone; null "
        "removes a limit, and fields left out stay as they are. Takes effect at once: a raised "
        "budget lets refused work flow again. Returns the agent.",
        _limits_schema(),
        _set_agent_limits,
        idempotent=True,
    ),
    ToolDef(
        "publish_event",
        TokenScope.EVENTS_PUBLISH,
        "Publish an event: every active event task of yours whose pattern matches `type` "
        "(exactly, or by a prefix pattern such as 'github.*') fires once, with the event "
        "available to its steps as ${event.type} and ${event.payload...}; other agents' tasks "
        "only through `audience`. Returns the event's `id` and how many runs of your tasks "
        "it `queued`.",
        _described(EventPublish.model_json_schema(), _EVENT_HELP, idempotency_key=_IDEMPOTENCY_KEY),
        _publish_event,
    ),
    ToolDef(
        "list_task_types",
        TokenScope.TASKS_READ,
        "List the task types: steps done outside pao by agents that claim them. Each has a "
        "`name` (what a step writes in `uses`), `parameters_schema` (what its `with` must "
        "be), `output_schema`, `lease_seconds` and `is_active`. Returns `items` and "
        "`next_cursor`.",
        _object(
            {
                "include_inactive": {
                    "type": "boolean",
                    "default": False,
                    "description": "also list deleted (inactive) types",
                },
                "limit": _LIMIT,
                "cursor": _CURSOR,
            }
        ),
        _list_task_types,
        read_only=True,
    ),
    ToolDef(
        "create_task_type",
        TokenScope.ADMIN,
        "Declare a task type: a kind of step that agents outside pao do. Tasks may then use "
        "it in a pipeline step's `uses`, and agents with work:claim take its steps with "
        "claim_work. Refused (and nothing stored) if the name is taken or is a built-in "
        'tool\'s, or a schema is not acceptable. Example: {"name": "demo.uppercase", '
        '"parameters_schema": {"type": "object", "properties": {"text": {"type": '
        '"string"}}, "required": ["text"]}}.',
        _described(TaskTypeCreate.model_json_schema(), _TASK_TYPE_HELP),
        _create_task_type,
    ),
    ToolDef(
        "claim_work",
        TokenScope.WORK_CLAIM,
        "Take steps of a task type to do yourself, waiting up to `wait_seconds` for one. "
        "Returns `items`: each with a `claim_id`, the step's `parameters` (its input) and "
        "`lease_expires_at`; an empty list if there was no work. Do the step, then call "
        "complete_claim with its output or fail_claim; call heartbeat_claim before the "
        "lease ends if the work takes longer, or the step is given to someone else.",
        _object(
            {
                "task_type": _TASK_TYPE_NAME,
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 10,
                    "default": 1,
                    "description": "at most this many steps",
                },
                "wait_seconds": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 20,
                    "default": CLAIM_WAIT_SECONDS,
                    "description": "how long to wait for a step when there is none now",
                },
            },
            "task_type",
        ),
        _claim_work,
    ),
    ToolDef(
        "heartbeat_claim",
        TokenScope.WORK_CLAIM,
        "Keep a claimed step: extends its lease by the type's lease_seconds and returns the "
        "new `lease_expires_at`. A 409 means the claim was lost (the lease ran out, the run "
        "was cancelled): stop working on the step.",
        _object({"claim_id": _CLAIM_ID}, "claim_id"),
        _heartbeat_claim,
    ),
    ToolDef(
        "complete_claim",
        TokenScope.WORK_CLAIM,
        "Finish a claimed step with its `output` (checked against the type's output_schema; "
        "refused with the fields named, and nothing changed, if it breaks it); the run "
        "continues with it as the step's output. A 409 means the claim was lost.",
        _object(
            {
                "claim_id": _CLAIM_ID,
                "output": {"type": "object", "description": "the step's result, a JSON object"},
                "cost": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1e9,
                    "description": "optional: what doing the step cost",
                },
            },
            "claim_id",
            "output",
        ),
        _complete_claim,
    ),
    ToolDef(
        "fail_claim",
        TokenScope.WORK_CLAIM,
        "Give up on a claimed step: it fails with `error`; `retryable` says whether trying "
        "it again could succeed (the task's retries decide). A 409 means the claim was lost.",
        _object(
            {
                "claim_id": _CLAIM_ID,
                "error": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 10_000,
                    "description": "what went wrong, for the people reading the run",
                },
                "retryable": {
                    "type": "boolean",
                    "default": False,
                    "description": "whether trying the step again could succeed",
                },
            },
            "claim_id",
            "error",
        ),
        _fail_claim,
    ),
    ToolDef(
        "list_assets",
        TokenScope.ASSETS_READ,
        "List your assets (files that runs use and make), newest first. Each has `id`, "
        "`filename`, `label`, `media_type`, `size`, `tags`, `run_id` and `uri`: read its "
        f"content as the MCP resource at `uri` (up to {RESOURCE_MAX_BYTES} bytes inline; a "
        "larger one answers with a signed link). Returns `items` and `next_cursor`.",
        _object(
            {
                "tag": {**_TAG, "description": "only assets with this tag"},
                "label": {"type": "string", "maxLength": 200, "description": "exact label"},
                "media_type": {
                    **_MEDIA_TYPE,
                    "description": "only this type, e.g. 'image/png', or a family: 'image/*'",
                },
                "run_id": {**_RUN_ID, "description": "only assets of this run"},
                "task_id": {**_TASK_ID, "description": "only assets of this task's runs"},
                "limit": _LIMIT,
                "cursor": _CURSOR,
            }
        ),
        _list_assets,
        read_only=True,
    ),
    ToolDef(
        "upload_asset",
        TokenScope.ASSETS_WRITE,
        f"Store a small file (at most {UPLOAD_MAX_BYTES} bytes) as an asset, given as base64. "
        "Its media type is read from its bytes (a `media_type` the bytes contradict is "
        "refused). With `run_id` it is attached to that run. Returns the asset with its "
        "`id` and `uri`; a step's input can then name the id.",
        _object(
            {
                "filename": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "description": "the file's name, e.g. 'chart.png'",
                },
                "content_base64": {
                    "type": "string",
                    "maxLength": 4 * math.ceil(UPLOAD_MAX_BYTES / 3),
                    "description": "the file's bytes, base64 (RFC 4648, with padding)",
                },
                "label": {"type": "string", "maxLength": 200, "description": "free text"},
                "tags": {
                    "type": "array",
                    "items": _TAG,
                    "maxItems": 32,
                    "description": "words to find it by later (list_assets' tag)",
                },
                "media_type": {
                    **_MEDIA_TYPE,
                    "description": "optional: what it is, e.g. 'text/csv'; checked against "
                    "the bytes",
                },
                "run_id": {**_RUN_ID, "description": "optional: attach it to this run"},
            },
            "filename",
            "content_base64",
        ),
        _upload_asset,
    ),
    ToolDef(
        "asset_link",
        TokenScope.ASSETS_READ,
        "A signed URL that downloads one of your assets without a token until `expires_at`: "
        "for a tool or person that should fetch the file. Anyone holding it can read the "
        "file until then.",
        _object(
            {
                "asset_id": _ASSET_ID,
                "expires_in": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 3600,
                    "default": LINK_SECONDS,
                    "description": "seconds the link works",
                },
            },
            "asset_id",
        ),
        _asset_link,
        read_only=True,
    ),
    ToolDef(
        "delete_asset",
        TokenScope.ASSETS_WRITE,
        "Delete one of your assets and its bytes; your asset quota is freed at once.",
        _object({"asset_id": _ASSET_ID}, "asset_id"),
        _delete_asset,
        destructive=True,
        idempotent=True,
    ),
)

TOOLS_BY_NAME = {t.name: t for t in TOOLS}


def explain(problem: ApiProblem) -> str:
    """A refused call, for an agent: what went wrong and what to do about it."""
    text = f"{problem.title} ({problem.status}): {problem.detail}".rstrip(": ")
    if problem.errors:
        text += "\n" + "\n".join(
            f"- {e.get('field', '?')}: {e.get('message', 'invalid')}" for e in problem.errors
        )
    hint = {
        401: "The token is missing, unknown, revoked or expired; ask an admin for a valid one.",
        403: "This token may not do this; ask an admin for a token with that scope. "
        "Nothing was changed.",
        404: "No such object among yours; list_tasks, list_runs or list_assets show the ids "
        "you can use.",
        409: "The object is not in a state that allows this; read it again before retrying.",
        422: "Fix the fields named and call again; nothing was stored.",
        503: "The service is briefly unavailable; retry in a few seconds.",
    }.get(problem.status)
    return f"{text}\n{hint}" if hint else text


def build_server(client: PaoClient, token_for_call: Callable[[], str]) -> Server[Any, Any]:
    """The MCP server; `token_for_call` says whose token the current call carries."""
    server: Server[Any, Any] = Server(
        "pao",
        version=_version(),
        instructions=(
            "pao schedules work for you: create a task (a schedule and a pipeline of tool "
            "steps), and pao runs it at every occurrence, retries failures and records each "
            "run. Check schedules with preview_task, start one at once with run_now, and read "
            "results with list_runs and get_run. Steps can also be done by agents: an admin "
            "declares a task type (create_task_type), a step names it in `uses`, and an agent "
            "with work:claim takes such steps with claim_work and ends them with "
            "complete_claim or fail_claim. Files (assets) are resources at "
            "pao://assets/{id}: list_assets finds them, upload_asset stores a small one."
        ),
    )

    @server.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return [t.tool() for t in TOOLS]

    @server.call_tool()  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        tool = TOOLS_BY_NAME.get(name)
        if tool is None:
            raise ToolFailed(f"unknown tool {name!r}; list_tools shows the ones there are")
        try:
            return await tool.call(client.with_token(token_for_call()), arguments)
        except ApiProblem as problem:
            raise ToolFailed(explain(problem)) from None
        except (ApiUnreachable, InvalidId) as exc:
            raise ToolFailed(exc.message) from None

    @server.list_resources()  # type: ignore[no-untyped-call, untyped-decorator]
    async def list_resources(request: types.ListResourcesRequest) -> types.ListResourcesResult:
        cursor = request.params.cursor if request.params else None
        try:
            page = await client.with_token(token_for_call()).list_assets(
                limit=RESOURCE_PAGE, cursor=cursor
            )
        except ApiProblem as problem:
            if problem.status == 403:  # a token without assets:read has no resources
                return types.ListResourcesResult(resources=[])
            raise _resource_error(problem) from None
        except ApiUnreachable as exc:
            raise McpError(
                types.ErrorData(code=types.INTERNAL_ERROR, message=exc.message)
            ) from None
        return types.ListResourcesResult(
            resources=[_resource(a) for a in page["items"]], nextCursor=page["next_cursor"]
        )

    @server.list_resource_templates()  # type: ignore[no-untyped-call, untyped-decorator]
    async def list_resource_templates() -> list[types.ResourceTemplate]:
        return [ASSET_TEMPLATE]

    @server.read_resource()  # type: ignore[no-untyped-call, untyped-decorator]
    async def read_resource(uri: AnyUrl) -> Iterable[ReadResourceContents]:
        return await read_asset_resource(client.with_token(token_for_call()), str(uri))

    return server


ASSET_TEMPLATE = types.ResourceTemplate(
    uriTemplate=ASSET_URI,
    name="asset",
    title="A pao asset",
    description=(
        "An asset's content by its id: text for text types, base64 for the rest, up to "
        f"{RESOURCE_MAX_BYTES} bytes; a larger one answers with a signed link (in the text, "
        f"and in _meta as pao/link) that works for {LINK_SECONDS} seconds."
    ),
)


def _resource(asset: Asset) -> types.Resource:
    """One asset as an MCP resource."""
    name = asset["filename"] or f"asset-{asset['id']}"
    described = [f"{asset['media_type']}, {asset['size']} bytes"]
    if asset["tags"]:
        described.append("tags: " + ", ".join(asset["tags"]))
    if asset["run_id"]:
        described.append(f"from run {asset['run_id']}")
    return types.Resource(
        uri=AnyUrl(asset_uri(asset["id"])),
        name=name,
        title=asset["label"] or None,
        description="; ".join(described),
        mimeType=asset["media_type"],
        size=asset["size"],
    )


def _is_text(media_type: str) -> bool:
    main, _, sub = media_type.partition(";")[0].strip().lower().partition("/")
    return (
        main == "text"
        or sub in ("json", "xml", "yaml", "javascript", "x-ndjson")
        or sub.endswith(("+json", "+xml"))
    )


async def read_asset_resource(client: PaoClient, uri: str) -> list[ReadResourceContents]:
    """`pao://assets/{id}`: the content (text or bytes) up to RESOURCE_MAX_BYTES, else a
    signed link to it. Another agent's asset, or none, is a resource-not-found error."""
    match = _ASSET_URI.match(uri)
    if match is None:
        raise McpError(
            types.ErrorData(
                code=types.INVALID_PARAMS,
                message=f"no resource {uri[:200]!r}: pao's resources are {ASSET_URI}",
            )
        )
    try:
        asset, data = await client.read_asset(match.group(1), max_bytes=RESOURCE_MAX_BYTES)
        if data is None:
            link = await client.asset_link(asset["id"], LINK_SECONDS)
            text = (
                f"Asset {asset['id']} ({asset['filename'] or 'no name'}, {asset['media_type']}) "
                f"is {asset['size']} bytes, more than the {RESOURCE_MAX_BYTES} this server "
                f"returns inline. Download it until {link['expires_at']} from: {link['url']}"
            )
            meta = {
                "pao/link": link["url"],
                "pao/expires_at": link["expires_at"],
                "pao/size": asset["size"],
                "pao/media_type": asset["media_type"],
            }
            return [ReadResourceContents(content=text, mime_type="text/plain", meta=meta)]
    except ApiProblem as problem:
        raise _resource_error(problem) from None
    except (ApiUnreachable, InvalidId) as exc:
        raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=exc.message)) from None
    if _is_text(asset["media_type"]):
        try:
            return [
                ReadResourceContents(content=data.decode("utf-8"), mime_type=asset["media_type"])
            ]
        except UnicodeDecodeError:
            pass  # declared text, but not UTF-8: sent as bytes
    return [ReadResourceContents(content=data, mime_type=asset["media_type"])]


def _resource_error(problem: ApiProblem) -> McpError:
    code = RESOURCE_NOT_FOUND if problem.status == 404 else types.INVALID_REQUEST
    if problem.status >= 500:
        code = types.INTERNAL_ERROR
    return McpError(types.ErrorData(code=code, message=explain(problem)))


def _version() -> str:
    try:
        return metadata.version("pao")
    except metadata.PackageNotFoundError:
        return "0"


async def serve_stdio(base_url: str, token: str) -> None:
    """Serve one agent over stdin/stdout, calling the API with `token`."""
    async with PaoClient.connect(base_url, token) as client:
        server = build_server(client, lambda: token)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class _RequireBearer:
    """Refuse requests without a bearer token before the MCP transport sees them."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and bearer(Request(scope).headers) is None:
            response = JSONResponse(
                {
                    "type": "urn:pao:problem:unauthenticated",
                    "title": "Unauthenticated",
                    "status": 401,
                    "detail": "send your pao token as 'Authorization: Bearer <token>'; every "
                    "tool call is made with it",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="pao"'},
                media_type="application/problem+json",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _HttpFace:
    """The streamable HTTP app's parts that live as long as the app (built in its lifespan)."""

    def __init__(self, base_url: str, security: TransportSecuritySettings | None) -> None:
        self.base_url = base_url
        self.security = security
        self.server: Server[Any, Any] | None = None
        self.manager: StreamableHTTPSessionManager | None = None

    def request_token(self) -> str:
        """The bearer token of the HTTP request that carried the current tool call."""
        assert self.server is not None
        request = self.server.request_context.request
        token = bearer(request.headers) if isinstance(request, Request) else None
        if token is None:  # _RequireBearer lets no such request through
            raise ToolFailed("this request carries no bearer token")
        return token

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with PaoClient.connect(self.base_url, token="") as client:
            self.server = build_server(client, self.request_token)
            # Stateless: every request stands alone, so any replica can answer it and
            # no session outlives the agent that opened it.
            self.manager = StreamableHTTPSessionManager(
                app=self.server, security_settings=self.security, stateless=True
            )
            async with self.manager.run():
                log.info("serving MCP at %s, calling the API at %s", MCP_PATH, self.base_url)
                yield

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.manager is not None
        await self.manager.handle_request(scope, receive, send)


def http_app(base_url: str, *, host: str) -> Starlette:
    """Streamable HTTP at /mcp; each request's own bearer token makes its API calls."""
    security = None
    if host in ("127.0.0.1", "localhost", "::1"):
        # Only local pages may call a server bound to loopback (DNS rebinding).
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    face = _HttpFace(base_url, security)
    return Starlette(
        routes=[Route(MCP_PATH, endpoint=_RequireBearer(face.handle))], lifespan=face.lifespan
    )


def run(args: Any) -> int:
    """`pao mcp`: serve until stdin closes (stdio) or a signal (HTTP)."""
    base_url = (args.api_url or api_url_from_env()).rstrip("/")
    # The SDK narrates every request at INFO; stdout belongs to the protocol anyway.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    if args.http:
        if args.token:
            print(
                "pao mcp: --token is for stdio; over HTTP each request sends its own",
                file=sys.stderr,
            )
            return 2
        uvicorn.run(
            http_app(base_url, host=args.host),
            host=args.host,
            port=args.port,
            log_level=os.environ.get("PAO_LOG_LEVEL", "info").lower(),
            timeout_graceful_shutdown=5,
        )
        return 0
    token = args.token or os.environ.get("PAO_TOKEN")
    if not token:
        print(
            "pao mcp: no token: set PAO_TOKEN (or pass --token) to the agent's pao token",
            file=sys.stderr,
        )
        return 2
    anyio.run(serve_stdio, base_url, token)
    return 0
