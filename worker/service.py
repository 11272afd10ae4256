"""The worker process: claims due work and runs pipelines, `--concurrency` at a time.

This module wires the parts together and owns the process's life: start, and on
SIGTERM a drain that always ends. The parts:

- `worker.claims`: the claim loop, and the idle wait (LISTEN, poll, next due);
- `worker.leases`: the runs held, lease renewal, cancel requests, the heartbeat;
- `worker.run`: one run, from its claim to its end handed to the writer;
- `worker.outcomes`: the one writer of run ends and progress;
- `worker.run_events`: events for live streams of watched tasks;
- `worker.trouble`: how the loops live through database errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.settings import Settings
from pao.tools import ToolRegistry
from worker.claims import Claims
from worker.leases import Leases, Running
from worker.outcomes import Outcomes
from worker.run import Runner
from worker.run_events import RunEvents
from worker.trouble import Outage

if TYPE_CHECKING:
    from pao.mcp import McpHub

log = logging.getLogger(__name__)

# After SIGTERM and the grace, the most a worker takes to hand back what still runs, write
# what it can and exit, whatever the database does (ops/k8s leave it 10 s).
CLOSE_SECONDS = 5.0


class Worker:
    """One worker process's parts, and its life from `serve` to the end of the drain."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[db.Conn],
        listen_url: str | None,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        # None: nothing to LISTEN on (a transaction-mode pooler); the worker polls more often.
        self.listen_url = listen_url
        self.worker_id = worker_id or (
            f"worker-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.registry = ToolRegistry.from_tools_file(settings.tools_file, settings.tool_costs)
        self.mcp = _hub(self.registry)  # one session per MCP server, shared
        wake = asyncio.Event()  # the claim loop's: work was announced, or a slot freed
        outage = Outage()
        self.outcomes = Outcomes(pool, self.worker_id)
        self.events = RunEvents(pool)
        self.leases = Leases(
            pool,
            self.worker_id,
            settings.lease_seconds,
            settings.worker_concurrency,
            outage,
        )
        self.runner = Runner(
            settings,
            pool,
            costs=self.registry.cost_of,
            leases=self.leases,
            wake=wake,
            outcomes=self.outcomes,
            events=self.events,
            mcp=self.mcp,
        )
        self.claims = Claims(
            pool,
            self.worker_id,
            lease_seconds=settings.lease_seconds,
            listen_url=listen_url,
            leases=self.leases,
            runner=self.runner,
            events=self.events,
            wake=wake,
            outage=outage,
        )

    @property
    def running(self) -> dict[int, Running]:
        """The runs held now, by due_work id."""
        return self.leases.running

    @property
    def concurrency(self) -> int:
        return self.settings.worker_concurrency

    async def serve(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        """Claim and run until `stop`; then drain (until `force` or the grace ends).

        Shutdown is bounded whatever the database does: running work has the grace to
        finish, then handing back the rest and closing take at most CLOSE_SECONDS.
        """
        writer = asyncio.create_task(self.outcomes.run(), name="outcomes")
        helpers = [
            asyncio.create_task(self.events.run(), name="run-events"),
            asyncio.create_task(self.leases.keep(), name="keeper"),
            asyncio.create_task(self.leases.watch(), name="lease-watch"),
        ]
        if self.listen_url is not None:
            helpers.append(asyncio.create_task(self.claims.listen(stop), name="listen"))
        log.info("worker %s running (concurrency %s)", self.worker_id, self.concurrency)
        loop = asyncio.get_running_loop()
        claims = asyncio.create_task(self.claims.loop(stop), name="claims")
        try:
            await stop.wait()
            drain_until = loop.time() + self.settings.shutdown_grace_seconds
            # The claim in flight ends first (its runs then drain like the others); one
            # that hangs is cancelled when the grace is over, its rows left to their leases.
            await _wait_until(claims, drain_until, force)
            await self._drain(force, drain_until)
        finally:
            # The last second and a half of the close is the process's own: the pool, the
            # metrics server and the event loop close after this returns.
            close_until = loop.time() + CLOSE_SECONDS - 1.5
            claims.cancel()
            await self._hand_back(close_until - 1.0)
            self.outcomes.close()
            await _wait_until(writer, close_until - 1.0)
            self.outcomes.abandon()  # their leases decide
            pending = self.leases.tasks()
            if pending:
                await asyncio.wait(pending, timeout=_left(close_until - 1.0, at_least=0.1))
            helpers += [writer, claims]
            for helper in helpers:
                helper.cancel()
            await asyncio.wait(helpers, timeout=_left(close_until - 1.0, at_least=0.1))
            await self._close(close_until)
            log.info("worker %s stopped", self.worker_id)

    async def _drain(self, force: asyncio.Event, until: float) -> None:
        """Let running pipelines finish until `until` (or `force`)."""
        loop = asyncio.get_running_loop()
        forced = asyncio.create_task(force.wait())
        try:
            while self.running and not force.is_set() and loop.time() < until:
                await asyncio.wait(
                    {*self.leases.tasks(), forced},
                    timeout=until - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            forced.cancel()

    async def _hand_back(self, until: float) -> None:
        """Stop what still runs and hand it back unspent, waiting for that until `until`."""
        self.leases.stop_all()
        pending = self.leases.tasks()
        if pending:
            # Their ends are being written; if the database stays away, their leases decide.
            await asyncio.wait(pending, timeout=_left(until, at_least=0.1))

    async def _close(self, until: float) -> None:
        """The last words, each bounded: run events, MCP sessions, the heartbeat's row."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_left(until - 0.5, at_least=0.1)):
                await self.events.flush()  # watchers hear how the last runs ended
        if self.mcp is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_left(until - 0.5, at_least=0.1)):
                    await self.mcp.close()  # the pipelines that used it have ended
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_left(until, at_least=0.1)):
                await self.leases.forget()


def _left(until: float, *, at_least: float = 0.0) -> float:
    """Seconds from now until `until` on the loop's clock, never less than `at_least`."""
    return max(at_least, until - asyncio.get_running_loop().time())


async def _wait_until(
    task: asyncio.Task[None], until: float, force: asyncio.Event | None = None
) -> None:
    """Wait for `task` until `until` or `force`, whichever comes first; it is not cancelled."""
    waiters: set[asyncio.Future[Any]] = {task}
    forced = asyncio.create_task(force.wait()) if force is not None else None
    if forced is not None:
        waiters.add(forced)
    try:
        await asyncio.wait(waiters, timeout=_left(until), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if forced is not None:
            forced.cancel()


def _hub(registry: ToolRegistry) -> McpHub | None:
    """The MCP hub, or None without servers: the SDK (about 13 MB) is loaded only when used."""
    if not registry.servers:
        return None
    from pao.mcp import McpHub

    return McpHub(registry.servers)
