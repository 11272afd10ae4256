"""The tools a pipeline step may use."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from api.deps import State, TasksRead
from api.models import ToolList, ToolPublic, ToolServerPublic
from pao.domain import task_types

router = APIRouter(prefix="/tools", tags=["tools"])


@router.get("", response_model=ToolList)
async def list_tools(state: State, agent: TasksRead) -> ToolList:
    """Every tool a step may name in `uses`, with the JSON schema of its `with`.

    Built-in tools (`kind` builtin), the tools of the MCP servers declared in
    `PAO_TOOLS_FILE` as each server last listed them (named `<server>.<tool>`, kind
    mcp), and the active task types (kind remote: done by agents that claim them).
    `servers` says, for each MCP server, whether it could be reached and when it was
    last asked; a server not reached yet is asked now, briefly. Only admins are told why a
    server failed (`error`): it names the server's command line, directory and
    the last lines of its stderr, which are the operator's business.
    """
    await state.discovery.try_all()
    async with state.tx() as conn:
        await task_types.refresh_registry(conn, state.registry)
    tools = state.registry.list_tools()
    servers = []
    for name, config in state.registry.servers.items():
        seen = state.discovery.states[name]
        servers.append(
            ToolServerPublic(
                name=name,
                transport=config.transport,
                reachable=seen.ok,
                error=seen.error if agent.is_admin else None,
                checked_at=(
                    datetime.fromtimestamp(seen.checked_at, UTC) if seen.checked_at else None
                ),
                tools=sum(1 for t in tools if t.server == name),
            )
        )
    return ToolList(
        items=[
            ToolPublic(
                name=t.name,
                description=t.description,
                input_schema=t.input_schema,
                server=t.server,
                kind=t.kind,
            )
            for t in tools
        ],
        servers=servers,
    )
