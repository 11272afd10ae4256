"""Claiming due work while slots are free, and waiting idle: LISTEN, the poll, the next due.

Claiming is one short transaction that commits before any step runs. Idle
workers wake on LISTEN/NOTIFY (on a connection of their own), poll as a
fallback, and sleep until exactly the next `run_after`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import psycopg
from psycopg_pool import AsyncConnectionPool

from pao import db, streams
from pao.clock import DatabaseClock
from pao.errors import DatabaseUnavailable
from pao.models import Event
from pao.store import run_events, work
from pao.store.work import Claimed
from pao.vocabulary import RunStatus
from worker import metrics
from worker.leases import Leases
from worker.run import Runner
from worker.run_events import RunEvents
from worker.trouble import Outage, Trouble

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# Without LISTEN (behind a transaction-mode pooler with no direct URL) polling is all there is.
POLL_UNHEARD_SECONDS = 0.25
MIN_IDLE_SECONDS = 0.02
TASK_CACHE = 10_000
CHANNEL = "pao_work"
# Rows per claim at most. With more slots free, the runs of one claim start while the next
# is claimed instead of after one long claim: a lone worker of 256 slots drained no-op runs
# 28 % faster in claims of 128 than in claims of 256 (medians of 6 interleaved rounds).
CLAIM_BATCH = 128
# Bound once: a member looked up on its enum class costs 0.2 µs (Python 3.11), each run.
_RUNNING = RunStatus.RUNNING


class Claims:
    """The claim loop: claims what the free slots can take and starts it; never dies."""

    def __init__(
        self,
        pool: AsyncConnectionPool[db.Conn],
        worker_id: str,
        *,
        lease_seconds: int,
        listen_url: str | None,
        leases: Leases,
        runner: Runner,
        events: RunEvents,
        wake: asyncio.Event,
        outage: Outage,
        clock: DatabaseClock,
    ) -> None:
        self.pool = pool
        self.clock = clock  # the runner's too: measured on the claim's connection
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        # None: nothing to LISTEN on (a transaction-mode pooler); the worker polls more often.
        self.listen_url = listen_url
        self.poll_seconds = POLL_SECONDS if listen_url is not None else POLL_UNHEARD_SECONDS
        self.leases = leases
        self.runner = runner
        self.events = events
        self.wake = wake
        self.outage = outage
        self._tasks: dict[uuid.UUID, work.Versioned] = {}  # by id, with their row versions

    async def loop(self, stop: asyncio.Event) -> None:
        """Claim while slots are free, sleep until woken, due work or the poll; never dies.

        An outage is retried every poll; any other error (a statement refused, a timeout, a
        protocol error) is logged with what to do and retried after a growing pause.
        """
        retried = False  # the last empty claim was retried at once
        trouble = Trouble("claiming work")
        while not stop.is_set():
            timeout = self.poll_seconds
            free = self.leases.free()
            if free > 0:
                try:
                    limit = min(free, CLAIM_BATCH)
                    claimed = await self.claim(limit)
                    if len(claimed) == limit:
                        continue  # maybe more is waiting
                    if claimed:
                        await asyncio.sleep(0)  # the runs just claimed start first
                    timeout = await self._until_next_due(timeout)
                    timeout, retried = idle_wait(timeout, claimed=bool(claimed), retried=retried)
                    self.outage.ok()
                    trouble.ok()
                except DatabaseUnavailable:
                    self.outage.failed()
                except Exception as exc:
                    timeout = trouble.failed(exc)
            await self._sleep(stop, timeout)

    async def claim(self, limit: int) -> list[Claimed]:
        """Claim up to `limit` due occurrences and start running them.

        The common claim is one statement (one round trip); the task rows come from this
        worker's cache while their row versions are unchanged, events and changed tasks in
        one more round trip, and keyed work among the due rows in a claim of its own.
        """
        started = time.perf_counter()
        hold = self.leases.hold
        async with db.statement(self.pool) as conn:
            # Measured here (when a few seconds old) so that the runs claimed now go by it.
            await self.clock.sync(conn)
            sent = time.monotonic()  # leases start no earlier than this, by the database clock
            first = await work.claim_unkeyed(
                conn,
                worker_id=self.worker_id,
                limit=limit,
                lease_seconds=self.lease_seconds,
            )
            # Held from now on: if reading their tasks hangs past the lease, the lease watch
            # gives them up, and they are never started (another worker may have them by then).
            fresh_holds = [hold(c, sent) for c, _ in first.claimed]
            try:
                claimed = [c for c, _ in first.claimed]
                stale = {c.task_id for c, v in first.claimed if self._task_version(c.task_id) != v}
                tasks = {
                    c.task_id: self._tasks[c.task_id][1] for c in claimed if c.task_id not in stale
                }
                events: dict[uuid.UUID, Event] = {}
                event_ids = [c.event_id for c in claimed if c.event_id is not None]
                if stale or event_ids:
                    fresh, events = await work.rows_for(conn, list(stale), event_ids)
                    tasks.update((task_id, task) for task_id, (_, task) in fresh.items())
                    self._remember(fresh)
                if first.keyed and len(claimed) < limit:
                    sent = time.monotonic()
                    more = await work.claim(
                        conn,
                        worker_id=self.worker_id,
                        limit=limit - len(claimed),
                        lease_seconds=self.lease_seconds,
                    )
                    fresh_holds += [hold(c, sent) for c in more.claimed]
                    claimed += more.claimed
                    tasks.update((task_id, task) for task_id, (_, task) in more.tasks.items())
                    self._remember(more.tasks)
                    events.update(more.events)
            except BaseException:
                # Never to start here: unheld, so that their leases run out and the
                # scheduler hands them to a worker that can read their tasks.
                for held in fresh_holds:
                    self.leases.running.pop(held.claimed.id, None)
                raise
        if not claimed:
            return claimed
        metrics.claimed(len(claimed), time.perf_counter() - started)
        for held in fresh_holds:
            c = held.claimed
            if held.stop_reason is not None:
                continue  # its lease ran out before it could start
            if c.attempt == 1 and c.started_at is not None and not c.saved_steps:
                metrics.started_late((c.started_at - c.scheduled_for).total_seconds())
            self.events.state(c, _RUNNING)
            event = events.get(c.event_id) if c.event_id else None
            self.runner.start(held, tasks[c.task_id], event)
        return claimed

    def _task_version(self, task_id: uuid.UUID) -> str | None:
        held = self._tasks.get(task_id)
        return held[0] if held else None

    def _remember(self, tasks: dict[uuid.UUID, work.Versioned]) -> None:
        if len(self._tasks) + len(tasks) > TASK_CACHE:
            self._tasks.clear()
        self._tasks.update(tasks)

    async def _until_next_due(self, default: float) -> float:
        """Seconds until the next queued work falls due by the database's clock (never the
        host's: one ahead would spin, one behind would start work late), at most `default`."""
        async with db.statement(self.pool) as conn:
            seconds = await work.next_due(conn)
        if seconds is None:
            return default
        return max(0.0, min(default, seconds))

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self.wake.clear()

    async def listen(self, stop: asyncio.Event) -> None:
        """LISTEN on a connection of its own; a lost notification only delays (we also poll).

        Besides new work it hears which tasks API processes' streams watch.
        """
        assert self.listen_url is not None
        while not stop.is_set():
            try:
                conn = await db.listen_connection(self.listen_url)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(f"LISTEN {streams.WATCH_CHANNEL}")
                    await run_events.announce(conn, streams.ASK)  # who watches what?
                    async for note in conn.notifies():
                        if note.channel == CHANNEL:
                            self.wake.set()
                        elif note.payload != streams.ASK:
                            self.events.heard(note.payload, self.leases.running.values())
            except (psycopg.Error, OSError) as exc:
                log.debug("the listening connection failed (%s); reconnecting", exc)
                await asyncio.sleep(1.0)


def idle_wait(until_due: float, *, claimed: bool, retried: bool) -> tuple[float, bool]:
    """How long to sleep after a claim that left slots free, and whether that is an
    immediate retry of an empty claim.

    Work already due after an empty claim means one of two things. The timer woke the
    worker a moment before the work fell due (timers round, and the claim goes by the
    database's clock), and claiming again at once starts it. Or another claim holds the
    due rows locked, and retrying every MIN_IDLE_SECONDS beats a busy loop. One immediate
    retry serves the first; backing off after it serves the second.
    """
    if claimed or until_due > 0:
        return until_due, False
    if retried:
        return MIN_IDLE_SECONDS, True
    return 0.0, True
