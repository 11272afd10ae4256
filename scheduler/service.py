"""The scheduler process: APScheduler drives the periodic jobs; PostgreSQL holds all state.

Any number of replicas may run. None is special: every job takes its rows
with `SKIP LOCKED`, so replicas share the work and never do the same piece
twice. A job that finds the database gone logs it and tries again on its next
tick; the pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.clock import Clock, DatabaseClock
from pao.domain import events as event_logic
from pao.errors import DatabaseUnavailable
from pao.settings import Settings
from pao.store import events, heartbeats, runs
from pao.vocabulary import ProcessKind, WorkState
from pao.zones import tzdata_version
from scheduler import metrics
from scheduler.housekeeping import drop_partitions, ensure_partitions, prune_step
from scheduler.materialise import materialise_batch
from scheduler.rescue import rescue_batch
from scheduler.retime import retime_batch

log = logging.getLogger(__name__)

MATERIALISE_BATCH = 1000
RETIME_BATCH = 1000
RESCUE_BATCH = 100
EVENT_BATCH = 100
HEARTBEAT_SECONDS = 5.0
HOUSEKEEPING_SECONDS = 60.0
# How often to look for fire times an older tzdata computed (at start, then now and then, for
# tasks an API replica still on the old release wrote during an upgrade). Cheap: an index read.
RETIME_SECONDS = 60.0
GAUGE_SECONDS = 10.0
# One tick's jobs stop taking new batches after this long, so ticks stay short.
TICK_BUDGET_SECONDS = 10.0
GOODBYE_SECONDS = 2.0
#: Finished due-work states, estimated from the planner's statistics rather than counted.
_ESTIMATED_STATES = (
    WorkState.SUCCEEDED,
    WorkState.FAILED,
    WorkState.CANCELLED,
    WorkState.TIMED_OUT,
)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[db.Conn],
        *,
        clock: Clock | None = None,
        process_id: str | None = None,
    ) -> None:
        """`clock` None (as in production) takes every decision by the database's clock;
        tests drive a clock of their own instead."""
        self.settings = settings
        self.pool = pool
        self._database_clock: DatabaseClock | None = None
        if clock is None:
            clock = self._database_clock = DatabaseClock()
        self.clock: Clock = clock
        self.process_id = process_id or (
            f"scheduler-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._db_down = False
        self._retimed_once = False
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def materialise(self) -> int:
        """Queue every occurrence due before now + look-ahead; returns how many were queued."""
        queued = 0
        started = asyncio.get_running_loop().time()
        while True:
            async with db.connection(self.pool) as conn:
                now = await self.now(conn)
                horizon = now + timedelta(seconds=self.settings.lookahead_seconds)
                tasks, n = await materialise_batch(
                    conn,
                    now=now,
                    horizon=horizon,
                    limit=MATERIALISE_BATCH,
                    default_timezone=self.settings.default_timezone,
                )
            queued += n
            metrics.MATERIALISED.inc(n)
            if tasks < MATERIALISE_BATCH or self._over_budget(started):
                return queued

    async def retime(self) -> int:
        """Recompute the stored fire times an older tzdata release computed; returns how many
        moved. Each task once, however many schedulers do this at the same time."""
        version = tzdata_version()
        seen = moved = 0
        started = asyncio.get_running_loop().time()
        while True:
            async with db.connection(self.pool) as conn:
                now = await self.now(conn)
                n, m = await retime_batch(conn, now=now, version=version, limit=RETIME_BATCH)
            seen, moved = seen + n, moved + m
            if n < RETIME_BATCH or self._over_budget(started):
                break
        if seen or not self._retimed_once:
            log.info(
                "zone rules of tzdata %s: %s tasks' fire times were computed with an older "
                "release; %s of them moved",
                version,
                seen,
                moved,
            )
        self._retimed_once = True
        return moved

    async def rescue(self) -> int:
        """Return work with expired leases to the queue (or end it); returns how many."""
        rescued = 0
        started = asyncio.get_running_loop().time()
        while True:
            async with db.connection(self.pool) as conn:
                n = await rescue_batch(
                    conn,
                    limit=RESCUE_BATCH,
                    base_seconds=self.settings.retry_base_seconds,
                    cap_seconds=self.settings.retry_cap_seconds,
                )
            rescued += n
            if n < RESCUE_BATCH or self._over_budget(started):
                return rescued

    async def dispatch_events(self) -> int:
        """Fan out events published by pipeline steps; returns how many events."""
        async with db.connection(self.pool) as conn:
            pending = await events.lock_pending(conn, limit=EVENT_BATCH)
            limits = event_logic.Limits.of(self.settings)
            for event in pending:
                now = await self.now(conn)
                await event_logic.dispatch(conn, event, limits, now=now)
            await events.mark_dispatched(conn, [e.id for e in pending])
        return len(pending)

    async def maintain_partitions(self) -> None:
        """Create the history's partitions ahead and drop those past the retention, each in
        a transaction of its own (the first runs at start: housekeeping's first tick)."""
        retention = timedelta(days=self.settings.retention_days)
        try:
            async with db.connection(self.pool) as conn:
                await ensure_partitions(conn, now=await self.now(conn))
            async with db.connection(self.pool) as conn:
                await drop_partitions(conn, now=await self.now(conn), retention=retention)
        except psycopg.errors.LockNotAvailable as exc:
            # Another replica's maintenance, or a long statement on the history, held a
            # lock past the lock timeout: nothing was changed; the next pass tries again,
            # and the row pruning goes on meanwhile.
            log.info("history partitions not maintained this pass: %s", exc)

    async def housekeeping(self) -> int:
        """Keep the partitions (made ahead, old months dropped whole), then prune the rows left
        older than the retention, in small transactions; returns rows deleted."""
        await self.maintain_partitions()
        deleted = 0
        started = asyncio.get_running_loop().time()
        retention = timedelta(days=self.settings.retention_days)
        while True:
            async with db.connection(self.pool) as conn:
                n = await prune_step(conn, now=await self.now(conn), retention=retention)
            deleted += n
            if n == 0 or self._over_budget(started):
                return deleted

    async def measure_queue(self) -> None:
        """Set the due-work gauges: exact where a partial index makes it cheap, else estimated.

        Queued and running rows are counted on their partial indexes (the
        queue, not the history); finished rows, which grow with history, come
        from the planner's statistics instead of a count over millions of rows.
        """
        async with db.connection(self.pool) as conn:
            queued, ready = await runs.queue_depth(conn)
            running = await runs.running_count(conn)
            estimates = await runs.state_estimates(conn)
        metrics.DUE_WORK.labels(WorkState.QUEUED).set(queued)
        metrics.DUE_WORK.labels(WorkState.RUNNING).set(running)
        metrics.DUE_WORK_READY.set(ready)
        for state in _ESTIMATED_STATES:
            metrics.DUE_WORK_ESTIMATED.labels(state).set(estimates.get(state, 0.0))

    async def heartbeat(self) -> None:
        async with db.connection(self.pool) as conn:
            await heartbeats.beat(conn, process_id=self.process_id, kind=ProcessKind.SCHEDULER)

    async def say_goodbye(self) -> None:
        """Remove this replica's heartbeat; a database that fails or hangs only leaves it
        to go stale, so shutdown never waits on it for more than a few seconds."""
        try:
            async with asyncio.timeout(GOODBYE_SECONDS):
                async with db.connection(self.pool) as conn:
                    await heartbeats.remove(conn, self.process_id)
        except (TimeoutError, DatabaseUnavailable, psycopg.Error) as exc:
            log.info("could not remove the heartbeat (%s); it goes stale by itself", exc)

    async def now(self, conn: db.Conn) -> datetime:
        """What time it is for this scheduler's decisions: the database's clock (measured
        on `conn` when the last measure is a few seconds old), or the test's own clock."""
        if self._database_clock is not None:
            return await self._database_clock.now(conn)
        return self.clock()

    def _over_budget(self, started: float) -> bool:
        return asyncio.get_running_loop().time() - started > TICK_BUDGET_SECONDS

    def _guarded(
        self, name: str, job: Callable[[], Awaitable[object]]
    ) -> Callable[[], Awaitable[None]]:
        """Run a job; log a database outage once (and its end), never let it escape."""

        timer = metrics.TICK_SECONDS.labels(name)
        failures = [0]  # in a row

        async def run() -> None:
            self._running += 1
            self._idle.clear()
            started = time.perf_counter()
            try:
                await job()
                timer.observe(time.perf_counter() - started)
            except asyncio.CancelledError:
                # Only shutdown cancels a job; its transaction rolls back and
                # the next replica or start picks the work up again.
                log.info("scheduler job %s interrupted by shutdown", name)
                return
            except DatabaseUnavailable:
                if not self._db_down:
                    log.warning("database unavailable; the scheduler keeps retrying")
                self._db_down = True
                return
            except Exception as exc:
                # Any other error (a statement refused or timed out): the job runs again on
                # its next tick. Logged in full once per run of failures, not every tick.
                failures[0] += 1
                if failures[0] == 1:
                    log.exception(
                        "scheduler job %s failed; it runs again on its next tick: %s",
                        name,
                        db.advice(exc),
                    )
                elif failures[0] % 100 == 0:
                    log.error("scheduler job %s has failed %s times in a row", name, failures[0])
                return
            finally:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()
            if failures[0]:
                log.info("scheduler job %s works again (after %s failures)", name, failures[0])
                failures[0] = 0
            if self._db_down:
                log.info("database is back")
                self._db_down = False

        return run

    async def serve(self, stop: asyncio.Event) -> None:
        """Run the periodic jobs until `stop` is set."""
        tick = self.settings.scheduler_tick_ms / 1000
        jobs: list[tuple[str, Callable[[], Awaitable[object]], float]] = [
            ("retime", self.retime, RETIME_SECONDS),
            ("materialise", self.materialise, tick),
            ("rescue", self.rescue, max(tick, 1.0)),
            ("events", self.dispatch_events, tick),
            ("heartbeat", self.heartbeat, HEARTBEAT_SECONDS),
            ("gauges", self.measure_queue, GAUGE_SECONDS),
            ("housekeeping", self.housekeeping, HOUSEKEEPING_SECONDS),
        ]
        aps = AsyncIOScheduler(timezone=UTC)
        for name, job, seconds in jobs:
            aps.add_job(
                self._guarded(name, job),
                "interval",
                seconds=seconds,
                id=name,
                max_instances=1,
                coalesce=True,
                # APScheduler paces the ticks by this host's clock (at once: on its own
                # clock); what each tick decides goes by the database's.
                next_run_time=datetime.now(UTC),
                misfire_grace_time=None,
            )
        aps.start()
        log.info("scheduler %s running", self.process_id)
        try:
            await stop.wait()
        finally:
            aps.pause()  # no new job starts; those running finish their transaction
            await self._drain()
            aps.shutdown(wait=False)
            await self.say_goodbye()
            log.info("scheduler %s stopped", self.process_id)

    async def _drain(self) -> None:
        """Let jobs already running finish their transaction (they are short).

        A job handed to the loop just before the pause has not counted itself
        yet, and another may start as one ends: yield first, then wait until
        the count is really zero.
        """
        try:
            async with asyncio.timeout(TICK_BUDGET_SECONDS + 5):
                await asyncio.sleep(0)
                while self._running:
                    await self._idle.wait()
                    await asyncio.sleep(0)
        except TimeoutError:
            log.warning("scheduler jobs still running at shutdown; their transactions roll back")
