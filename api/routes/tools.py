"""The tools a pipeline step may use."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import State, TasksRead
from api.models import ToolList, ToolPublic

router = APIRouter(prefix="/tools", tags=["tools"])


@router.get("", response_model=ToolList)
async def list_tools(state: State, agent: TasksRead) -> ToolList:
    """Every tool a step may name in `uses`, with the JSON schema of its `with`."""
    return ToolList(
        items=[
            ToolPublic(
                name=t.name, description=t.description, input_schema=t.input_schema, server=t.server
            )
            for t in state.registry.list_tools()
        ]
    )
