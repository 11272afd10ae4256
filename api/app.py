"""The FastAPI application, built by `create_app(settings)` so tests can point it anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.telemetry import TelemetryConfig

from api import problems
from api.deps import AppState
from api.discovery import ToolDiscovery
from api.middleware import RequestMiddleware
from api.openapi import document, install_docs
from api.remote import RemoteWork
from api.routes import (
    agents,
    assets,
    claims,
    events,
    health,
    metrics,
    runs,
    task_types,
    tasks,
    tools,
    ui,
)
from api.streams import StreamHub
from api.uploads import UploadSlots
from pao import db
from pao.clock import DatabaseClock
from pao.domain.agents import ensure_admin_token
from pao.mcp import McpHub
from pao.migrate import ensure_migrated
from pao.settings import Settings
from pao.tools import ToolRegistry

log = logging.getLogger(__name__)


async def _start(state: AppState) -> None:
    """Refuse to serve an unmigrated database; make sure PAO_ADMIN_TOKEN's agent exists."""
    async with state.tx() as conn:
        await ensure_migrated(conn)
        await state.clock.sync(conn)  # so that routes with no connection go by it too
        token = state.settings.admin_token
        if token and await ensure_admin_token(conn, token):
            log.info("created the admin agent for PAO_ADMIN_TOKEN")


def telemetry_config(environ: Mapping[str, str]) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry (spans, metrics, logs) only where OpenTelemetry is set up.

    Set up means an OTEL_* variable, as `opentelemetry-instrument` and every exporter are
    configured. Left on without one, FastAPI looks the global providers up on every request
    to find none: a twentieth of a GET's CPU, for nothing.
    """
    if any(name.startswith("OTEL_") for name in environ) or environ.get(
        "FASTAPI_OTEL_AUTO_CONFIGURE"
    ):
        return {}
    return {"tracing": False, "metrics": False, "logs": False}


# In the order their routes are tried.
ROUTERS = (
    tasks.router,
    runs.router,
    events.router,
    tools.router,
    agents.router,
    health.router,
    ui.router,
    metrics.router,
    task_types.router,
    claims.router,
    assets.router,
    assets.links_router,
)


def create_app(settings: Settings, *, database_url: str | None = None) -> FastAPI:
    """The API over `database_url` (default: the settings' URL)."""
    url = database_url or settings.database_url
    if not url:
        raise ValueError("create_app needs a database URL; the CLI resolves the embedded one")
    registry = ToolRegistry.from_tools_file(settings.tools_file, settings.tool_costs)
    app = FastAPI(
        title="Personal Agent Orchestrator",
        version="0.1.0",
        summary="A Postgres-native scheduler for software agents.",
        lifespan=_lifespan(settings, url, registry),
        telemetry=telemetry_config(os.environ),
        # FastAPI's pages load scripts from a CDN; ours serve the same from this server.
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)
    document(app)
    install_docs(app)
    for router in ROUTERS:
        app.include_router(router)
    _add_middleware(app, settings)
    return app


def _lifespan(
    settings: Settings, url: str, registry: ToolRegistry
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """What the app opens when it starts and closes when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await _open(settings, url, registry)
        app.state.pao = state
        # Before the listener starts: its channels are LISTENed when it connects.
        app.state.remote_work = RemoteWork(state.streams, registry)
        discovering: asyncio.Task[None] | None = None
        try:
            await _start(state)
            if registry.servers:
                # In the background: readiness does not wait for MCP servers.
                discovering = asyncio.create_task(state.discovery.run(), name="mcp-discovery")
            yield
        finally:
            if discovering is not None:
                discovering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await discovering
            await _close(state)

    return lifespan


async def _open(settings: Settings, url: str, registry: ToolRegistry) -> AppState:
    """The pool (opening in the background), the statement lane, MCP and streams."""
    # Connections used within the last second skip the ping: a request's sign-in and its
    # route then cost one round trip less each; after a restart the check is back.
    pool = db.make_pool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        trust_recent=1.0,
        prepare=not db.pooled(settings),
    )
    await pool.open(wait=False)
    hub = McpHub(registry.servers)
    return AppState(
        settings=settings,
        pool=pool,
        # Half the pool at most, so transactions and streams always find connections too.
        statements=db.StatementLane(pool, size=max(1, settings.pool_max_size // 2)),
        registry=registry,
        mcp=hub,
        discovery=ToolDiscovery(hub, registry),
        streams=StreamHub(db.listen_url(settings, url), pool),
        # An upload holds a connection while its client sends: at most half the pool.
        uploads=UploadSlots(
            total=max(1, settings.pool_max_size // 2), per_agent=settings.uploads_per_agent
        ),
        clock=DatabaseClock(),
    )


async def _close(state: AppState) -> None:
    """Close what `_open` opened, the pool last."""
    await state.streams.close()
    await state.mcp.close()
    await state.statements.close()
    await state.pool.close()


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """CORS where origins are set; the request middleware (ids, access log) outermost."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "X-Request-ID",
            ],
            expose_headers=[
                "X-Request-ID",
                "ETag",
                "Location",
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
        )
    app.add_middleware(RequestMiddleware, access_log=settings.log_format == "json")
