"""FastAPI dependencies: the database, the calling agent and its scope."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from psycopg_pool import AsyncConnectionPool

from api.discovery import ToolDiscovery
from api.streams import StreamHub
from api.uploads import UploadSlots
from pao import db, pagination
from pao.clock import DatabaseClock
from pao.domain.task_types import Editor
from pao.domain.tasks import Context, Quotas
from pao.errors import Forbidden, RateLimited, Unauthenticated
from pao.mcp import McpHub
from pao.models import Agent, Task
from pao.settings import Settings
from pao.store import rate_counters
from pao.tools import ToolRegistry
from pao.vocabulary import Scope


@dataclass
class AppState:
    """What the app holds for its lifetime; built in the lifespan."""

    settings: Settings
    pool: AsyncConnectionPool[db.Conn]
    statements: db.StatementLane
    registry: ToolRegistry
    mcp: McpHub
    discovery: ToolDiscovery
    streams: StreamHub
    uploads: UploadSlots
    clock: DatabaseClock  # the database's, measured on requests' own connections
    # The signed asset links' key, read once (pao.domain.assets.link_key).
    link_key: bytes | None = None

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[db.Conn]:
        """One transaction; committed when the block ends without error."""
        async with db.connection(self.pool) as conn:
            yield conn


async def get_state(request: Request) -> AppState:
    # async: a plain `def` dependency would be run on a thread for every request.
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


# Both limits count per minute.
WINDOW_SECONDS = 60


def client_address(request: Request) -> str:
    """Who failed to sign in: the peer address, or the client's as X-Forwarded-For gives
    it when the peer is a trusted proxy (PAO_FORWARDED_ALLOW_IPS, applied by uvicorn)."""
    return request.client.host if request.client else "unknown"


async def current_agent(request: Request, state: State) -> Agent:
    """The agent behind the bearer token; every failure looks the same to the caller.

    A valid token is always served (behind a proxy every client shares one
    address, and others' bad tokens must not lock it out); a request without
    one, from an address with too many failed sign-ins this minute, gets 429.
    A signed-in agent over its request rate gets 429 too. Both counters live
    in PostgreSQL, shared by every API replica.
    """
    agent, _ = await _sign_in(request, state, None)
    return agent


async def _sign_in(
    request: Request, state: AppState, task_id: uuid.UUID | None
) -> tuple[Agent, Task | None]:
    settings = state.settings
    async with state.statements.cursor() as cur:  # one statement: no transaction
        signed = await rate_counters.sign_in(
            cur,
            _bearer(request),
            failures_key=f"auth:{client_address(request)}",
            failures_limit=settings.auth_failures_per_minute,
            rate_limited=settings.rate_limit_per_minute > 0,
            window=WINDOW_SECONDS,
            task_id=task_id,
        )
    if signed.blocked is not None:  # only ever without a valid token
        raise RateLimited(
            "too many failed sign-ins from this address; wait, then send a valid token",
            retry_after=signed.blocked.reset_seconds,
        )
    agent, count = signed.agent, signed.count
    if agent is None:
        raise Unauthenticated()  # after the block: the failure is counted (committed)
    request.state.agent = agent
    if count is not None:
        limit = settings.rate_limit_per_minute
        request.state.rate_limit = (limit, max(0, limit - count.hits), count.reset_seconds)
        if count.hits > limit:
            raise RateLimited(
                f"this agent may make {limit} requests a minute; wait, or ask the operator "
                "to raise PAO_RATE_LIMIT_PER_MINUTE",
                retry_after=count.reset_seconds,
            )
    return agent, signed.task


class RequireScope:
    """A dependency that names the scope a route needs; tests read `.scope` off each route."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def check(self, agent: Agent) -> Agent:
        if not agent.has_scope(self.scope):
            raise Forbidden(f"this endpoint needs the '{self.scope}' scope")
        return agent

    async def __call__(self, agent: Annotated[Agent, Depends(current_agent)]) -> Agent:
        return self.check(agent)


@dataclass(frozen=True)
class SignedTask:
    agent: Agent
    task: Task | None  # not yet checked against what the agent may see


class TaskWithSignIn(RequireScope):
    """`scope`, and the task named in the path read by the sign-in's own statement.

    For GET /tasks/{id}, the hottest read: one round trip instead of two. A
    path that is no UUID reads nothing here, and the route's own validation
    answers it after the sign-in, as on every other route.
    """

    async def __call__(self, request: Request) -> SignedTask:  # type: ignore[override]
        # The app state straight off the request, not as a dependency of its own: on the
        # hottest route every dependency FastAPI resolves is a measurable cost.
        state: AppState = request.app.state.pao
        try:
            task_id: uuid.UUID | None = uuid.UUID(str(request.path_params["task_id"]))
        except ValueError:
            task_id = None
        agent, task = await _sign_in(request, state, task_id)
        return SignedTask(self.check(agent), task)


def scope(name: Scope) -> RequireScope:
    return RequireScope(name)


TasksRead = Annotated[Agent, Depends(scope(Scope.TASKS_READ))]
TaskRead = Annotated[SignedTask, Depends(TaskWithSignIn(Scope.TASKS_READ))]
TasksWrite = Annotated[Agent, Depends(scope(Scope.TASKS_WRITE))]
RunsRead = Annotated[Agent, Depends(scope(Scope.RUNS_READ))]
EventsPublish = Annotated[Agent, Depends(scope(Scope.EVENTS_PUBLISH))]
Admin = Annotated[Agent, Depends(scope(Scope.ADMIN))]
AssetsRead = Annotated[Agent, Depends(scope(Scope.ASSETS_READ))]
AssetsWrite = Annotated[Agent, Depends(scope(Scope.ASSETS_WRITE))]


def request_id(request: Request) -> str | None:
    rid: str | None = getattr(request.state, "request_id", None)
    return rid


def task_context(request: Request, state: AppState, agent: Agent) -> Context:
    """What the task logic needs to know of a request: who acts, its id, the limits."""
    return Context(
        actor=agent,
        request_id=request_id(request),
        registry=state.registry,
        default_timezone=state.settings.default_timezone,
        clock=state.clock,
        quotas=Quotas(
            max_active_tasks=state.settings.max_active_tasks,
            max_occurrences_per_hour=state.settings.max_occurrences_per_hour,
        ),
        http_allow=state.settings.http_allow,
    )


# One per scope a task route may need; async, so that none is run on a thread.
async def _tasks_read_context(request: Request, state: State, agent: TasksRead) -> Context:
    return task_context(request, state, agent)


async def _tasks_write_context(request: Request, state: State, agent: TasksWrite) -> Context:
    return task_context(request, state, agent)


async def _runs_read_context(request: Request, state: State, agent: RunsRead) -> Context:
    return task_context(request, state, agent)


# The task logic's Context for the signed-in agent, which holds the scope named.
TasksReadCtx = Annotated[Context, Depends(_tasks_read_context)]
TasksWriteCtx = Annotated[Context, Depends(_tasks_write_context)]
RunsReadCtx = Annotated[Context, Depends(_runs_read_context)]


@dataclass(frozen=True)
class PageAsked:
    """A list's page as asked for: how many items at most, and where the last page ended."""

    limit: int
    cursor: str | None


async def _page_asked(
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PageAsked:
    return PageAsked(limit, cursor)


# The `limit` and `cursor` query parameters of every list.
PageQuery = Annotated[PageAsked, Depends(_page_asked)]


async def _type_editor(request: Request, state: State, admin: Admin) -> Editor:
    return Editor(actor=admin, registry=state.registry, request_id=request_id(request))


# An admin changing task types, with the registry the change is checked against.
TypeEditor = Annotated[Editor, Depends(_type_editor)]
