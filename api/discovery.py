"""Learning the tools of the MCP servers in the tools file, so payloads can be checked.

At start the API lists each server's tools in the background (readiness does
not wait for it) and again every `REFRESH_SECONDS`. A request whose payload
names a server not discovered yet, or a tool the server did not list last
time, asks that server now, for at most `ENSURE_SECONDS`: the payload is then
checked against the tool's real input schema, and a server that cannot be
reached gets a 503 (`McpUnavailable`) instead of a task stored to fail later.
That 503 names the server but not why it failed: the reason carries the
server's command line and stderr, which go to the log (and to admins in
GET /tools), not to whichever agent sent the payload.
A server that goes away keeps its last list, so tasks using it can still be
checked while it restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pao.mcp import McpHub, McpUnavailable, describe
from pao.tools import ToolRegistry

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
ENSURE_SECONDS = 5.0


@dataclass
class ServerState:
    """What the API last learnt about one server."""

    ok: bool | None = None  # None: not tried yet
    error: str | None = None
    checked_at: float | None = None  # time.time()


class ToolDiscovery:
    def __init__(
        self,
        hub: McpHub,
        registry: ToolRegistry,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        ensure_seconds: float = ENSURE_SECONDS,
    ) -> None:
        self.hub = hub
        self.registry = registry
        self.refresh_seconds = refresh_seconds
        self.ensure_seconds = ensure_seconds
        self.states = {name: ServerState() for name in registry.servers}

    async def refresh(self, server: str) -> None:
        """List the server's tools into the registry; McpUnavailable if it cannot be reached."""
        state = self.states[server]
        try:
            tools = await self.hub.list_tools(server)
        except McpUnavailable as exc:
            if state.ok is not False:
                log.warning(
                    "%s; its tools stay %s, and tasks naming it are answered 503 until it is back",
                    exc.message,
                    "as last listed" if self.registry.is_discovered(server) else "unknown",
                )
            state.ok, state.error, state.checked_at = False, exc.message, time.time()
            raise
        self.registry.add_server_tools(server, tools)
        if state.ok is not True:
            log.info(
                "MCP server %s: %d tools discovered",
                describe(server, self.registry.servers[server]),
                len(tools),
            )
        state.ok, state.error, state.checked_at = True, None, time.time()

    async def refresh_all(self) -> None:
        """Refresh every server at once; failures are logged, not raised."""
        await asyncio.gather(*(self.refresh(name) for name in self.states), return_exceptions=True)

    async def run(self) -> None:
        """Refresh now and then every `refresh_seconds`, until cancelled."""
        while True:
            await self.refresh_all()
            await asyncio.sleep(self.refresh_seconds)

    async def ensure(self, uses: dict[str, list[str]]) -> None:
        """Make sure each server is discovered and lists the tools named, asking it if need be.

        `uses` maps a server to the `uses` strings naming it (`ToolRegistry.mcp_uses`).
        Raises McpUnavailable, naming the servers, when one cannot be asked.
        """
        stale = [
            server
            for server, named in uses.items()
            if not all(self.registry.knows(u) for u in named)
        ]
        await self._ask(stale, strict=True)

    async def try_all(self) -> None:
        """Discover servers not discovered yet, briefly; for listings, which never fail."""
        pending = [s for s in self.states if not self.registry.is_discovered(s)]
        await self._ask(pending, strict=False)

    async def _ask(self, servers: Iterable[str], *, strict: bool) -> None:
        servers = list(servers)
        if not servers:
            return

        async def one(server: str) -> str | None:
            try:
                async with asyncio.timeout(self.ensure_seconds):
                    await self.refresh(server)
            except TimeoutError:
                where = describe(server, self.registry.servers[server])
                log.warning(
                    "MCP server %s did not list its tools within %gs", where, self.ensure_seconds
                )
                return (
                    f"MCP server {server!r} is not available: it did not list its tools "
                    f"within {self.ensure_seconds:g}s"
                )
            except McpUnavailable:
                return f"MCP server {server!r} is not available"  # refresh() logged why
            return None

        problems = [p for p in await asyncio.gather(*(one(s) for s in servers)) if p]
        if problems and strict:
            raise McpUnavailable(
                "; ".join(problems)
                + ". The payload cannot be checked against its tools, so nothing was stored; "
                "retry once the server is reachable"
            )
