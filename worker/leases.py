"""The runs a worker holds and their leases: renewed every second, given up when they may
have run out.

A renewal also carries cancel requests. A lease that could not be renewed means the
work may be rescued elsewhere, so its run is stopped and nothing more is written for
it. The keeper beside the renewals beats the process's heartbeat every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.errors import DatabaseUnavailable
from pao.models import StepRecord
from pao.store import heartbeats, work
from pao.store.work import Claimed, Lease
from pao.vocabulary import ProcessKind
from worker import metrics
from worker.trouble import Outage, Trouble

log = logging.getLogger(__name__)

KEEPER_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0

StopReason = Literal["cancel", "lost", "shutdown"]


@dataclass
class Running:
    """One claimed run this worker holds, from its claim until its end is written."""

    claimed: Claimed
    lease: Lease
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    started: float = field(default_factory=time.monotonic)
    # When the last renewal that extended this lease was sent (the claim, at first).
    renewed: float = field(default_factory=time.monotonic)
    ending: bool = False  # its end is being written: nothing left to stop
    steps: list[StepRecord] = field(default_factory=list)  # so far, for a new watcher

    def stop(self, reason: StopReason) -> None:
        if self.ending:
            return
        if self.stop_reason is None and self.task is not None and not self.task.done():
            self.stop_reason = reason
            self.task.cancel()


@dataclass
class Leases:
    """What this worker holds, by due_work id, and the loops that keep it held."""

    pool: AsyncConnectionPool[db.Conn]
    worker_id: str
    lease_seconds: int
    concurrency: int
    outage: Outage
    running: dict[int, Running] = field(default_factory=dict)

    def hold(self, c: Claimed, sent: float) -> Running:
        """Hold a run just claimed; its lease counts from `sent`, when the claim was sent."""
        held = Running(c, Lease(c.id, c.attempt, self.worker_id), renewed=sent)
        self.running[c.id] = held
        return held

    def free(self) -> int:
        """Slots for new claims: runs whose end is being written hold only a lease, not a
        slot, so the next batch runs while the last one is written (up to twice as many)."""
        busy = sum(1 for r in self.running.values() if not r.ending)
        return min(self.concurrency - busy, 2 * self.concurrency - len(self.running))

    def tasks(self) -> set[asyncio.Task[None]]:
        """The runs started and not yet ended."""
        return {r.task for r in self.running.values() if r.task}

    def stop_all(self) -> None:
        for held in list(self.running.values()):
            held.stop("shutdown")

    def lose(self, held: Running) -> None:
        """Its lease may have run out: stop the run, or never start it if it has not started."""
        if held.task is not None:
            held.stop("lost")
        elif held.stop_reason is None:
            held.stop_reason = "lost"
            self.running.pop(held.claimed.id, None)
            metrics.run_ended("lost")
            log.warning("run %s: lease lost before it started; not started", held.claimed.run_id)

    async def keep(self) -> None:
        """Renew leases every second (carrying cancel requests) and beat every few.

        Never dies: a renewal that fails, whatever the error, is tried again a second
        later, and meanwhile the lease watch gives up runs whose leases may have run out.
        """
        last_beat = 0.0
        renewing, beating = Trouble("renewing leases"), Trouble("beating the heartbeat")
        while True:
            try:
                await self._renew()
                self.outage.ok()
                renewing.ok()
            except DatabaseUnavailable:
                self.outage.failed()
            except Exception as exc:
                renewing.failed(exc)
            if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                try:
                    await self._beat()
                    last_beat = time.monotonic()
                    beating.ok()
                except DatabaseUnavailable:
                    self.outage.failed()
                except Exception as exc:
                    beating.failed(exc)
            await asyncio.sleep(KEEPER_SECONDS)

    async def watch(self) -> None:
        """Stop each run once its lease may have run out, by this worker's own clock.

        A renewal can hang instead of failing (a network cut that closes nothing), and
        then the keeper waits with it; a row another transaction holds locked is not
        renewed at all. Only this clock notices that such a run may already be rescued
        and running elsewhere. Renewals are timed from when they were sent, so the worker
        gives a run up no later than the database considers it lost.
        """
        while True:
            now = time.monotonic()
            wait = KEEPER_SECONDS
            for held in list(self.running.values()):
                left = held.renewed + self.lease_seconds - now
                if left <= 0:
                    self.lose(held)
                else:
                    wait = min(wait, left)
            await asyncio.sleep(wait)

    async def _renew(self) -> None:
        held = dict(self.running)
        sent = time.monotonic()
        async with db.connection(self.pool) as conn:
            kept = await work.renew(
                conn,
                worker_id=self.worker_id,
                ids=list(held),
                lease_seconds=self.lease_seconds,
            )
        for due_work_id, running in held.items():
            state = kept.get(due_work_id)
            if state is None or state[0] != running.lease.attempt:
                self.lose(running)
                continue
            if state[2]:
                running.renewed = max(running.renewed, sent)
            if state[1]:
                running.stop("cancel")

    async def _beat(self) -> None:
        async with db.connection(self.pool) as conn:
            await heartbeats.beat(conn, process_id=self.worker_id, kind=ProcessKind.WORKER)

    async def forget(self) -> None:
        """Remove this process's heartbeat: it is stopping."""
        async with db.connection(self.pool) as conn:
            await heartbeats.remove(conn, self.worker_id)
