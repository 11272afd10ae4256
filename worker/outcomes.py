"""Run ends and step progress, written in batches by one writer.

A run's end counts only once it is written: until then the run keeps its slot
and its lease is renewed, so a worker that dies first loses no more than a
crash at any other moment would (the lease runs out; the run is retried).
Ends that arrive while a write is in flight go into the next one, so batches
grow with load and an idle worker writes each end at once. Progress (the
steps so far of long runs) is written by the same writer, never beside an
end of the same run, so a late progress write cannot overwrite a final one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg.errors import LockNotAvailable
from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.errors import DatabaseUnavailable
from pao.models import Task
from pao.store import work
from pao.store.work import Ending, Lease
from pao.vocabulary import RunStatus, ScheduleKind
from worker.pipeline import storable

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 1.0
# A run's row locked by another transaction for longer than this fails its own end's write
# (its lease then decides) instead of holding up every end queued behind it.
LOCK_WAIT_SECONDS = 2.0
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class End:
    """One attempt's end: final, a retry after `retry_delay` seconds, or handed back unspent."""

    lease: Lease
    run_id: uuid.UUID
    task: Task
    status: RunStatus
    steps: list[Any]
    error: str | None = None
    retry_delay: float | None = None
    hand_back: bool = False
    written: asyncio.Future[bool] = field(default_factory=lambda: _future())


def _future() -> asyncio.Future[bool]:
    return asyncio.get_running_loop().create_future()


class Outcomes:
    """The worker's single writer of run ends and progress."""

    def __init__(self, pool: AsyncConnectionPool[db.Conn], worker_id: str) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self._ends: list[End] = []
        # By due_work id (an int hashes in C; a UUID in Python): lease, run and steps so far.
        self._progress: dict[int, tuple[Lease, uuid.UUID, list[Any]]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._writing: list[End] = []  # the batch in flight

    async def end(self, item: End) -> bool:
        """Queue an end and wait until it is written; True if this worker still held the run."""
        self._progress.pop(item.lease.due_work_id, None)
        self._ends.append(item)
        self._wake.set()
        # Not shielded: the writer skips an end whose waiter was cancelled (the future is
        # then done) and writes it all the same; no run is cancelled while it ends.
        return await item.written

    def progress(self, lease: Lease, run_id: uuid.UUID, steps: list[Any]) -> None:
        """Note a run's steps so far; written within about a second, batched with others."""
        self._progress[lease.due_work_id] = (lease, run_id, steps)

    def forget(self, due_work_id: int) -> None:
        """Drop a run's unwritten progress: it is no longer this worker's to write."""
        self._progress.pop(due_work_id, None)

    async def run(self) -> None:
        """Write until closed and nothing is left; runs as one task beside the claim loop."""
        failures = 0
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while not (self._closing and not self._ends):
            if not self._ends:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROGRESS_SECONDS):
                        await self._wake.wait()
                self._wake.clear()
            try:
                await self._write_ends()
                if loop.time() - last_progress >= PROGRESS_SECONDS:
                    await self._write_progress()
                    last_progress = loop.time()
                failures = 0
            except Exception as exc:
                # Unavailable, or any other error (a progress write that failed, say): the
                # writer never dies, or every end queued behind it would wait forever.
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                if failures == 1:
                    if isinstance(exc, DatabaseUnavailable):
                        log.warning("cannot write run ends; retrying (leases are still renewed)")
                    else:
                        log.warning(
                            "writing run ends or progress failed (%s); retrying: %s",
                            exc,
                            db.advice(exc),
                        )
                await asyncio.sleep(delay)

    def close(self) -> None:
        """Let `run` return once every queued end is written."""
        self._closing = True
        self._wake.set()

    def abandon(self) -> None:
        """Give up on ends not yet written (the database stayed away); their leases expire.

        The batch being written too: its waiters hear False now, whatever the write does.
        """
        for item in [*self._ends, *self._writing]:
            if not item.written.done():
                item.written.set_result(False)
        self._ends = []

    async def _write_ends(self) -> None:
        batch, self._ends = self._ends, []
        if not batch:
            return
        self._writing = batch
        try:
            try:
                results = await self._write(batch)
            except DatabaseUnavailable:
                raise
            except LockNotAvailable:
                log.warning(
                    "a run's row is locked by another transaction; writing %s ends one at a time",
                    len(batch),
                )
                results = await self._write_each(batch)
            except Exception:
                # One bad row spoils a batch: write them one by one to find it.
                log.exception("writing %s run ends failed; writing them one at a time", len(batch))
                results = await self._write_each(batch)
        except DatabaseUnavailable:
            # Written again (those not yet answered) once the database is back.
            self._ends = [i for i in batch if not i.written.done()] + self._ends
            raise
        finally:
            self._writing = []
        for item, held in zip(batch, results, strict=True):
            if not item.written.done():
                item.written.set_result(held)

    async def _write_each(self, batch: list[End]) -> list[bool]:
        """One at a time, each answered as soon as it is written."""
        results = []
        for item in batch:
            held = await self._write_alone(item)
            if not item.written.done():
                item.written.set_result(held)
            results.append(held)
        return results

    async def _write_alone(self, item: End) -> bool:
        try:
            return (await self._write([item]))[0]
        except DatabaseUnavailable:
            raise
        except LockNotAvailable:
            log.warning(
                "run %s: its row is locked by another transaction; its lease will decide",
                item.run_id,
            )
            return False
        except Exception:
            log.exception("run %s: its end cannot be written; its lease will expire", item.run_id)
            return False

    async def _write(self, batch: list[End]) -> list[bool]:
        """One transaction for the batch, pipelined: a batch of final ends is one round trip.

        Only a batch that may complete a task (or holds a retry) waits for the finish's
        result before its COMMIT; the rest travels together.
        """
        held: dict[uuid.UUID, bool] = {}
        final = [i for i in batch if i.retry_delay is None and not i.hand_back]
        endings = [
            Ending(
                i.lease,
                i.status,
                i.steps,
                None if i.error is None else str(storable(i.error)),
            )
            for i in final
        ]
        async with db.statement(self.pool) as conn:
            async with db.pipelined_transaction(conn):
                await work.wait_for_locks_at_most(conn, LOCK_WAIT_SECONDS)
                finishing = await work.finish_many(conn, self.worker_id, endings)
                done: set[int] | None = None
                if any(_may_complete(i.task) for i in final):
                    done = await finishing()
                    completing = {
                        i.task.id
                        for i in final
                        if i.lease.due_work_id in done and _may_complete(i.task)
                    }
                    await work.complete_tasks_if_done(conn, sorted(completing))
                notify = False
                for i in batch:
                    if i.retry_delay is not None:
                        held[i.run_id] = await work.retry(
                            conn,
                            i.lease,
                            run_id=i.run_id,
                            delay_seconds=i.retry_delay,
                            steps=i.steps,
                            error=str(storable(i.error or RunStatus.FAILED)),
                        )
                        notify = True
                    elif i.hand_back:
                        held[i.run_id] = await work.hand_back(
                            conn, i.lease, run_id=i.run_id, steps=i.steps
                        )
                        notify = True
                if notify:
                    await work.notify_workers(conn)  # retried or handed back
            if done is None:
                done = await finishing()
        for i in final:
            held[i.run_id] = i.lease.due_work_id in done
        return [held[i.run_id] for i in batch]

    async def _write_progress(self) -> None:
        if not self._progress:
            return
        batch = [(lease, run_id, list(steps)) for lease, run_id, steps in self._progress.values()]
        self._progress.clear()
        async with db.connection(self.pool) as conn:
            await work.save_progress(conn, self.worker_id, batch)


def _may_complete(task: Task) -> bool:
    """Only a task with nothing more to fire can be completed by its last run."""
    return task.schedule_kind != ScheduleKind.EVENT and task.next_run_at is None
