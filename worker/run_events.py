"""Run events for live streams: sent only for watched tasks, batched, off the run's path.

API processes announce the tasks their streams watch (LISTEN pao_streams); the
worker keeps that list (`Watched`) and sends a run's state, steps and log lines
only while its task is watched, so unwatched work costs one set lookup.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from psycopg_pool import AsyncConnectionPool

from pao import db, streams
from pao.models import StepRecord
from pao.store import run_events
from pao.vocabulary import RunStatus

if TYPE_CHECKING:
    from pao.store.work import Claimed
    from worker.leases import Running

log = logging.getLogger(__name__)

EVENT_BATCH = 2000
PUBLISH_INTERVAL_SECONDS = 0.05


class RunEvents:
    """Publishes run events for watched tasks, batched, in order, off the run's own path.

    Events wait up to PUBLISH_INTERVAL_SECONDS to travel together. A run that
    ended within that time is sent as its end alone: the API reads an ended
    run from the database anyway, steps and all, so its earlier events would
    only repeat it. A failed publish is dropped, not retried: the API re-reads
    watched runs at every heartbeat, so a lost event only costs latency.
    """

    def __init__(self, pool: AsyncConnectionPool[db.Conn]) -> None:
        self.pool = pool
        self.watched = streams.Watched()
        self._queue: list[tuple[uuid.UUID, str, bool]] = []
        self._wake = asyncio.Event()
        self._failing = False

    def state(self, c: Claimed, status: RunStatus, *, final: bool = False) -> None:
        """The run's status changed: tell its watchers, if any."""
        if self.watched and c.task_id in self.watched:
            self.send(c.run_id, streams.state(c.run_id, c.task_id, status, c.attempt), final=final)

    def step(self, c: Claimed, index: int, record: StepRecord) -> None:
        """A step started or ended: tell its run's watchers, if any."""
        if self.watched and c.task_id in self.watched:
            self.send(c.run_id, streams.step(c.run_id, c.task_id, index, record))

    def log(self, c: Claimed, log_id: int) -> None:
        """A log line was stored: tell its run's watchers, if any."""
        if self.watched and c.task_id in self.watched:
            self.send(c.run_id, streams.log(c.run_id, c.task_id, log_id))

    def cost(self, c: Claimed, step_id: str, cost: Decimal, total: Decimal) -> None:
        """A step was charged: tell its run's watchers, if any."""
        if self.watched and c.task_id in self.watched:
            self.send(c.run_id, streams.cost(c.run_id, c.task_id, step_id, cost, total))

    def heard(self, payload: str, running: Iterable[Running]) -> None:
        """An API process announced watched tasks: new watchers get what we hold of them."""
        for task_id in self.watched.heard(payload):
            for held in list(running):
                c = held.claimed
                if c.task_id == task_id and not held.ending:
                    self.send(
                        c.run_id,
                        streams.snapshot(
                            c.run_id, c.task_id, RunStatus.RUNNING, c.attempt, held.steps
                        ),
                    )

    def send(self, run_id: uuid.UUID, payload: str, *, final: bool = False) -> None:
        self._queue.append((run_id, payload, final))
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            # A short wait gathers what follows into the same notifications: a busy worker
            # then sends a few packed NOTIFYs a second rather than a transaction per run.
            await asyncio.sleep(PUBLISH_INTERVAL_SECONDS)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Publish everything queued so far (the last ends, at shutdown)."""
        while self._queue:
            batch, self._queue = self._queue[:EVENT_BATCH], self._queue[EVENT_BATCH:]
            ended = {run_id for run_id, _, final in batch if final}
            payloads = [p for run_id, p, final in batch if final or run_id not in ended]
            try:
                async with db.connection(self.pool) as conn:
                    await run_events.publish(conn, streams.pack(payloads))
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning("could not publish %s run events: %s", len(batch), exc)
                self._failing = True
