"""FastAPI dependencies: the database, the calling agent and its scope."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from api.discovery import ToolDiscovery
from api.streams import StreamHub
from pao import db
from pao.errors import Forbidden, Unauthenticated
from pao.mcp import McpHub
from pao.models import Agent
from pao.settings import Settings
from pao.store import agents
from pao.tasks import Context
from pao.tools import ToolRegistry


@dataclass
class AppState:
    """What the app holds for its lifetime; built in the lifespan."""

    settings: Settings
    pool: AsyncConnectionPool[db.Conn]
    registry: ToolRegistry
    mcp: McpHub
    discovery: ToolDiscovery
    streams: StreamHub

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[db.Conn]:
        """One transaction; committed when the block ends without error."""
        async with db.connection(self.pool) as conn:
            yield conn


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.pao
    return state


State = Annotated[AppState, Depends(get_state)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def current_agent(request: Request, state: State) -> Agent:
    """The agent behind the bearer token; every failure looks the same to the caller."""
    token = _bearer(request)
    if token is None:
        raise Unauthenticated()
    async with state.tx() as conn:
        agent = await agents.authenticate(conn, token)
    if agent is None:
        raise Unauthenticated()
    request.state.agent = agent
    return agent


class RequireScope:
    """A dependency that names the scope a route needs; tests read `.scope` off each route."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, agent: Annotated[Agent, Depends(current_agent)]) -> Agent:
        if self.scope not in agent.scopes and not agent.is_admin:
            raise Forbidden(f"this endpoint needs the '{self.scope}' scope")
        return agent


def scope(name: str) -> RequireScope:
    return RequireScope(name)


TasksRead = Annotated[Agent, Depends(scope("tasks:read"))]
TasksWrite = Annotated[Agent, Depends(scope("tasks:write"))]
RunsRead = Annotated[Agent, Depends(scope("runs:read"))]
EventsPublish = Annotated[Agent, Depends(scope("events:publish"))]
Admin = Annotated[Agent, Depends(scope("admin"))]


def request_id(request: Request) -> str | None:
    rid: str | None = getattr(request.state, "request_id", None)
    return rid


def task_context(request: Request, state: AppState, agent: Agent) -> Context:
    return Context(
        actor=agent,
        request_id=request_id(request),
        registry=state.registry,
        default_timezone=state.settings.default_timezone,
    )
