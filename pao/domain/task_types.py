"""Task types: pipeline steps done by services outside pao, declared by an admin.

A step names a task type in `uses` like any tool; its `with` is checked against the type's
`parameters_schema` when the task is written, and again, rendered, when the step is offered
to the agents that claim the type (`pao.domain.claims`). Names share the tool namespace, so a type
may not take a built-in's name (or namespace) nor a name on a declared MCP server.

Each API process keeps the active types in its `ToolRegistry`. Several processes serve one
database, so a process loads them again before it checks a payload when: it never has, any
process changed a type (`NOTIFY pao_task_types`, which the API's listener turns into
`ToolRegistry.forget_remote`), `CACHE_SECONDS` have passed (in case that notification was
missed), or the payload names a tool it does not know (a type made a moment ago elsewhere).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pao import pagination
from pao.db import Conn
from pao.errors import Conflict, FieldError, InvalidInput, NotFound
from pao.jsonschemas import instance_errors, schema_errors
from pao.models import Agent
from pao.schemas import TaskTypeCreate, TaskTypeDefinition
from pao.store import audit
from pao.store import task_types as store
from pao.store.task_types import TaskType
from pao.tools import ToolRegistry, ToolSpec

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,127}(?:\.[a-z0-9_-]{1,127}){0,16}$"
"""Lowercase letters, digits, '_' and '-', in parts joined by dots: e.g. media.transcode.
Each character has one way to match (a dot only ever separates), so a check never backtracks."""
MAX_NAME = 128
MAX_METADATA_BYTES = 16 * 1024
CACHE_SECONDS = 5.0

_NAME = re.compile(NAME_PATTERN)


def check_name(name: str, loc: tuple[str | int, ...] = ("name",)) -> str:
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise InvalidInput.one(
            loc,
            f"invalid task type name {name[:200]!r}: use at most {MAX_NAME} lowercase letters, "
            "digits, '_' or '-', in parts joined by single dots, starting with a letter "
            "(e.g. media.transcode)",
        )
    return name


def check_collision(registry: ToolRegistry, name: str) -> None:
    """Conflict (409) if a built-in tool or a declared MCP server owns the name."""
    owner = registry.owner_of(name)
    if owner == "builtin":
        raise Conflict(
            f"{name!r} is a built-in tool's name or namespace (http, events, log, sleep); "
            "choose another name for the task type"
        )
    if owner == "mcp":
        server = name.partition(".")[0]
        raise Conflict(
            f"{name!r} would be a tool of the MCP server {server!r} declared in "
            "PAO_TOOLS_FILE; choose another first part for the task type's name"
        )


def check_definition(body: TaskTypeDefinition) -> None:
    """Every problem with a type's schemas and metadata, at once; InvalidInput if any."""
    errors: list[FieldError] = []
    errors += schema_errors(body.parameters_schema, ("parameters_schema",), root_type="object")
    if body.output_schema is not None:
        errors += schema_errors(body.output_schema, ("output_schema",))
    size = len(json.dumps(body.metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        errors.append(
            FieldError(
                ("metadata",),
                f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed",
            )
        )
    if errors:
        raise InvalidInput(errors)


def spec_of(task_type: TaskType) -> ToolSpec:
    """How the registry (and GET /tools) shows a task type."""
    return ToolSpec(
        name=task_type.name,
        description=task_type.description
        or f"Done by an agent that claims task type {task_type.name!r}.",
        input_schema=task_type.parameters_schema,
        required_scope=None,
        kind="remote",
        cost_per_call=task_type.cost_per_call,
    )


async def refresh_registry(
    conn: Conn, registry: ToolRegistry, payload: object = None, *, force: bool = False
) -> None:
    """Load the active task types into `registry` when its copy may be out of date, or
    `payload` names a step tool it does not know."""
    loaded = registry.remote_loaded_at
    fresh = loaded is not None and time.monotonic() - loaded < CACHE_SECONDS
    if fresh and not force and not _unknown_uses(registry, payload):
        return
    started = time.monotonic()
    types = await store.list_active(conn)
    shadowed = registry.set_remote([spec_of(t) for t in types], loaded_at=started)
    for name in shadowed:
        log.warning(
            "task type %r is hidden by a built-in tool or an MCP server of PAO_TOOLS_FILE; "
            "steps cannot use it until it is renamed or the server is",
            name,
        )


def _unknown_uses(registry: ToolRegistry, payload: object) -> bool:
    steps = payload.get("pipeline") if isinstance(payload, Mapping) else None
    for step in steps if isinstance(steps, list) else []:
        uses = step.get("uses") if isinstance(step, Mapping) else None
        if isinstance(uses, str) and registry.owner_of(uses) is None and not registry.knows(uses):
            return True
    return False


@dataclass(frozen=True)
class Editor:
    """Who changes task types (an admin), the registry the change is checked against and
    told of, and the request it belongs to (for the audit log)."""

    actor: Agent
    registry: ToolRegistry
    request_id: str | None


async def list_types(
    conn: Conn, *, limit: int, cursor: str | None, include_inactive: bool
) -> tuple[list[TaskType], str | None]:
    """A page of task types by name, and the cursor of the next page."""
    rows = await store.list_page(
        conn, limit=limit + 1, after=cursor, include_inactive=include_inactive
    )
    return pagination.page(rows, limit, lambda t: t.name)


async def create_type(conn: Conn, editor: Editor, body: TaskTypeCreate) -> TaskType:
    registry, actor, request_id = editor.registry, editor.actor, editor.request_id
    check_name(body.name)
    check_collision(registry, body.name)
    check_definition(body)
    created = await store.insert(conn, _fields(body, body.name), created_by=actor.id)
    if created is None:
        existing = await store.get(conn, body.name)
        if existing is not None and not existing.is_active:
            raise Conflict(
                f"task type {body.name!r} exists but is inactive; PUT /task-types/"
                f"{body.name} with is_active true to use it again"
            )
        raise Conflict(
            f"task type {body.name!r} exists already; change it with PUT /task-types/{body.name}"
        )
    await _changed(conn, registry, actor, created, "task_type.create", request_id)
    return created


async def get_type(conn: Conn, name: str) -> TaskType:
    found = await store.get(conn, name)
    if found is None:
        raise NotFound(f"no task type {name[:200]!r}; GET /task-types lists them")
    return found


async def update_type(conn: Conn, editor: Editor, name: str, body: TaskTypeDefinition) -> TaskType:
    registry, actor, request_id = editor.registry, editor.actor, editor.request_id
    await get_type(conn, name)
    if body.is_active:
        check_collision(registry, name)
    check_definition(body)
    updated = await store.update(conn, _fields(body, name))
    if updated is None:
        raise NotFound(f"no task type {name[:200]!r}; GET /task-types lists them")
    await _changed(conn, registry, actor, updated, "task_type.update", request_id)
    return updated


async def deactivate_type(conn: Conn, editor: Editor, name: str) -> None:
    """Soft delete: no new task may use the type; the worker fails runs of stored ones."""
    changed = await store.deactivate(conn, name)
    if changed is None:
        await get_type(conn, name)  # NotFound if there is no such type; inactive is fine
        return
    await _changed(
        conn, editor.registry, editor.actor, changed, "task_type.delete", editor.request_id
    )


async def _changed(
    conn: Conn,
    registry: ToolRegistry,
    actor: Agent,
    task_type: TaskType,
    action: str,
    request_id: str | None,
) -> None:
    await audit.record(
        conn,
        actor_id=actor.id,
        action=action,
        target_type="task_type",
        target_id=task_type.name,
        request_id=request_id,
        detail={"name": task_type.name, "version": task_type.version},
    )
    await store.notify_changed(conn, task_type.name)
    registry.forget_remote()


def _fields(body: TaskTypeDefinition, name: str) -> dict[str, Any]:
    return {**body.model_dump(), "name": name}


def check_output(task_type: TaskType, output: Mapping[str, Any]) -> None:
    """InvalidInput (naming each field under `output`) if the output breaks the type's
    output_schema."""
    if task_type.output_schema is None:
        return
    errors = instance_errors(
        task_type.output_schema,
        dict(output),
        ("output",),
        what=f"the output_schema of task type {task_type.name!r} (GET /task-types/"
        f"{task_type.name})",
    )
    if errors:
        raise InvalidInput(errors)


def check_parameters(task_type: TaskType, parameters: Mapping[str, Any], step_id: str) -> None:
    """InvalidInput if a step's rendered parameters break the type's parameters_schema."""
    errors = instance_errors(
        task_type.parameters_schema,
        dict(parameters),
        ("steps", step_id, "with"),
        what=f"the parameters_schema of task type {task_type.name!r}",
    )
    if errors:
        raise InvalidInput(errors)
