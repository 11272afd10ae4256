"""Task types: steps done by agents outside pao. Admins declare them; anyone reads them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.deps import PageQuery, State, TasksRead, TypeEditor
from api.models import TaskTypePage, TaskTypePublic
from api.openapi import conflicts
from pao.domain import task_types as logic
from pao.schemas import TaskTypeCreate, TaskTypeDefinition

router = APIRouter(prefix="/task-types", tags=["task types"])

Name = Annotated[str, Path(min_length=1, max_length=128)]


@router.post("", status_code=201, response_model=TaskTypePublic, responses=conflicts(409))
async def create_task_type(state: State, editor: TypeEditor, body: TaskTypeCreate) -> Response:
    """Declare a task type: a step may then name it in `uses`, and agents with `work:claim`
    claim its steps (POST /task-types/{name}/claim). 409 if the name is taken, or is a
    built-in tool's or an MCP server's; 422 if a schema is not acceptable."""
    async with state.tx() as conn:
        created = await logic.create_type(conn, editor, body)
    return Response(
        TaskTypePublic.of(created).model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": f"/task-types/{created.name}"},
    )


@router.get("", response_model=TaskTypePage)
async def list_task_types(
    state: State, agent: TasksRead, page: PageQuery, include_inactive: bool = False
) -> TaskTypePage:
    """Task types by name; `include_inactive` lists deleted ones too."""
    async with state.tx() as conn:
        items, next_cursor = await logic.list_types(
            conn, limit=page.limit, cursor=page.cursor, include_inactive=include_inactive
        )
    return TaskTypePage(items=[TaskTypePublic.of(t) for t in items], next_cursor=next_cursor)


@router.get("/{name}", response_model=TaskTypePublic)
async def get_task_type(state: State, agent: TasksRead, name: Name) -> TaskTypePublic:
    """One task type, active or not."""
    async with state.tx() as conn:
        return TaskTypePublic.of(await logic.get_type(conn, name))


@router.put("/{name}", response_model=TaskTypePublic, responses=conflicts(409))
async def update_task_type(
    state: State, editor: TypeEditor, name: Name, body: TaskTypeDefinition
) -> TaskTypePublic:
    """Replace a task type's definition (everything but its name). Tasks already stored
    keep their steps; the rendered input of each step is checked against the new schema
    when it is offered."""
    async with state.tx() as conn:
        return TaskTypePublic.of(await logic.update_type(conn, editor, name, body))


@router.delete("/{name}", status_code=204)
async def delete_task_type(state: State, editor: TypeEditor, name: Name) -> Response:
    """Make a task type inactive (it is kept, for the history of its steps). New tasks
    may not use it; stored tasks using it fail at their next run, with an error naming it.
    PUT it with `is_active: true` to use it again."""
    async with state.tx() as conn:
        await logic.deactivate_type(conn, editor, name)
    return Response(status_code=204)
