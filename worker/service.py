"""The worker process: claims due work and runs pipelines, `--concurrency` at a time.

Claiming is one short transaction that commits before any step runs. Leases
are renewed every second while a pipeline runs, which also carries cancel
requests; a lease that could not be renewed means the work may be rescued
elsewhere, so the pipeline is stopped and nothing more is written for it.
Idle workers wake on LISTEN/NOTIFY (on a connection of their own), poll as a
fallback, and sleep until exactly the next `run_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg_pool import AsyncConnectionPool

from pao import db, logs, streams
from pao.backoff import retry_delay
from pao.errors import DatabaseUnavailable, InvalidInput
from pao.models import Event, Task
from pao.pipeline import Pipeline, load_pipeline
from pao.settings import Settings
from pao.store import heartbeats, run_events, work
from pao.store.work import Claimed, Lease
from pao.templates import JSONValue
from pao.tools import ToolRegistry
from worker import metrics
from worker.http_tool import Allow
from worker.limits import Limits
from worker.outcomes import End, Outcomes
from worker.pipeline import (
    ConditionNotMet,
    Execution,
    RunTimedOut,
    StepFailed,
    execute,
    task_view,
)
from worker.tools import Toolbox

if TYPE_CHECKING:
    from pao.mcp import McpHub

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# Without LISTEN (behind a transaction-mode pooler with no direct URL) polling is all there is.
POLL_UNHEARD_SECONDS = 0.25
# After SIGTERM and the grace, the most a worker takes to hand back what still runs, write
# what it can and exit, whatever the database does (ops/k8s leave it 10 s).
CLOSE_SECONDS = 5.0
# Pauses after an unexpected database error, one more each time it happens again in a row.
ERROR_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)
MIN_IDLE_SECONDS = 0.02
WRITER_GRACE_SECONDS = 10.0
KEEPER_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0
PIPELINE_CACHE = 10_000
TASK_CACHE = 10_000
CHANNEL = "pao_work"
EVENT_BATCH = 2000
PUBLISH_INTERVAL_SECONDS = 0.05
# Rows per claim at most. With more slots free, the runs of one claim start while the next
# is claimed instead of after one long claim: a lone worker of 256 slots drained no-op runs
# 28 % faster in claims of 128 than in claims of 256 (medians of 6 interleaved rounds).
CLAIM_BATCH = 128

StopReason = Literal["cancel", "lost", "shutdown"]


@dataclass
class Running:
    claimed: Claimed
    lease: Lease
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    started: float = field(default_factory=time.monotonic)
    # When the last renewal that extended this lease was sent (the claim, at first).
    renewed: float = field(default_factory=time.monotonic)
    ending: bool = False  # its end is being written: nothing left to stop
    steps: list[dict[str, Any]] = field(default_factory=list)  # so far, for a new watcher

    def stop(self, reason: StopReason) -> None:
        if self.ending:
            return
        if self.stop_reason is None and self.task is not None and not self.task.done():
            self.stop_reason = reason
            self.task.cancel()


class Worker:
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
        self.poll_seconds = POLL_SECONDS if listen_url is not None else POLL_UNHEARD_SECONDS
        self.worker_id = worker_id or (
            f"worker-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.registry = ToolRegistry.from_tools_file(settings.tools_file)
        self.allow = Allow.parse(settings.http_allow)
        self.mcp = _hub(self.registry)  # one session per MCP server, shared
        self.running: dict[int, Running] = {}
        self.wake = asyncio.Event()
        self._db_down = False
        # By task and version: the parsed pipeline, and the task row its view was made of.
        self._pipelines: dict[
            tuple[uuid.UUID, int], tuple[Pipeline, Task, dict[str, JSONValue]]
        ] = {}
        self._tasks: dict[uuid.UUID, work.Versioned] = {}  # by id, with their row versions
        self.outcomes = Outcomes(pool, self.worker_id)
        self.watched = streams.Watched()
        self.events = RunEvents(pool)
        self.limits = Limits.of(settings)

    # -- the claim loop ------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        """Claim and run until `stop`; then drain (until `force` or the grace ends).

        Shutdown is bounded whatever the database does: running work has the grace to
        finish, then handing back the rest and closing take at most CLOSE_SECONDS.
        """
        writer = asyncio.create_task(self.outcomes.run(), name="outcomes")
        helpers = [
            asyncio.create_task(self.events.run(), name="run-events"),
            asyncio.create_task(self._keep(stop), name="keeper"),
            asyncio.create_task(self._watch_leases(), name="lease-watch"),
        ]
        if self.listen_url is not None:
            helpers.append(asyncio.create_task(self._listen(stop), name="listen"))
        log.info("worker %s running (concurrency %s)", self.worker_id, self.concurrency)
        loop = asyncio.get_running_loop()
        claims = asyncio.create_task(self._claim_loop(stop), name="claims")
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
            pending = {r.task for r in self.running.values() if r.task}
            if pending:
                await asyncio.wait(pending, timeout=_left(close_until - 1.0, at_least=0.1))
            helpers += [writer, claims]
            for helper in helpers:
                helper.cancel()
            await asyncio.wait(helpers, timeout=_left(close_until - 1.0, at_least=0.1))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_left(close_until - 0.5, at_least=0.1)):
                    await self.events.flush()  # watchers hear how the last runs ended
            if self.mcp is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_left(close_until - 0.5, at_least=0.1)):
                        await self.mcp.close()  # the pipelines that used it have ended
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_left(close_until, at_least=0.1)):
                    async with db.connection(self.pool) as conn:
                        await heartbeats.remove(conn, self.worker_id)
            log.info("worker %s stopped", self.worker_id)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        """Claim while slots are free, sleep until woken, due work or the poll; never dies.

        An outage is retried every poll; any other error (a statement refused, a timeout, a
        protocol error) is logged with what to do and retried after a growing pause.
        """
        retried = False  # the last empty claim was retried at once
        trouble = Trouble("claiming work")
        while not stop.is_set():
            timeout = self.poll_seconds
            free = self._free()
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
                    self._db_ok()
                    trouble.ok()
                except DatabaseUnavailable:
                    self._db_failed()
                except Exception as exc:
                    timeout = trouble.failed(exc)
            await self._sleep(stop, timeout)

    async def _hand_back(self, until: float) -> None:
        """Stop what still runs and hand it back unspent, waiting for that until `until`."""
        for held in list(self.running.values()):
            held.stop("shutdown")
        pending = {r.task for r in self.running.values() if r.task}
        if pending:
            # Their ends are being written; if the database stays away, their leases decide.
            await asyncio.wait(pending, timeout=_left(until, at_least=0.1))

    @property
    def concurrency(self) -> int:
        return self.settings.worker_concurrency

    def _free(self) -> int:
        """Slots for new claims: runs whose end is being written hold only a lease, not a
        slot, so the next batch runs while the last one is written (up to twice as many)."""
        busy = sum(1 for r in self.running.values() if not r.ending)
        return min(self.concurrency - busy, 2 * self.concurrency - len(self.running))

    async def claim(self, limit: int) -> list[Claimed]:
        """Claim up to `limit` due occurrences and start running them.

        The common claim is one statement (one round trip); the task rows come from this
        worker's cache while their row versions are unchanged, events and changed tasks in
        one more round trip, and keyed work among the due rows in a claim of its own.
        """
        started = time.perf_counter()
        sent = time.monotonic()  # leases start no earlier than this, by the database clock
        async with db.statement(self.pool) as conn:
            first = await work.claim_unkeyed(
                conn,
                worker_id=self.worker_id,
                limit=limit,
                lease_seconds=self.settings.lease_seconds,
            )
            # Held from now on: if reading their tasks hangs past the lease, the lease watch
            # gives them up, and they are never started (another worker may have them by then).
            fresh_holds = [self._hold(c, sent) for c, _ in first.claimed]
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
                        lease_seconds=self.settings.lease_seconds,
                    )
                    fresh_holds += [self._hold(c, sent) for c in more.claimed]
                    claimed += more.claimed
                    tasks.update((task_id, task) for task_id, (_, task) in more.tasks.items())
                    self._remember(more.tasks)
                    events.update(more.events)
            except BaseException:
                # Never to start here: unheld, so that their leases run out and the
                # scheduler hands them to a worker that can read their tasks.
                for held in fresh_holds:
                    self.running.pop(held.claimed.id, None)
                raise
        if not claimed:
            return claimed
        metrics.claimed(len(claimed), time.perf_counter() - started)
        for held in fresh_holds:
            c = held.claimed
            if held.stop_reason is not None:
                continue  # its lease ran out before it could start
            if c.attempt == 1 and c.started_at is not None:
                metrics.started_late((c.started_at - c.scheduled_for).total_seconds())
            if self.watched and c.task_id in self.watched:
                self.events.send(c.run_id, streams.state(c.run_id, c.task_id, "running", c.attempt))
            event = events.get(c.event_id) if c.event_id else None
            held.task = asyncio.create_task(self._run(held, tasks[c.task_id], event))
            held.task.add_done_callback(functools.partial(self._done, c.id))
        return claimed

    def _hold(self, c: Claimed, sent: float) -> Running:
        held = Running(c, Lease(c.id, c.attempt, self.worker_id), renewed=sent)
        self.running[c.id] = held
        return held

    def _lose(self, held: Running) -> None:
        """Its lease may have run out: stop the run, or never start it if it has not started."""
        if held.task is not None:
            held.stop("lost")
        elif held.stop_reason is None:
            held.stop_reason = "lost"
            self.running.pop(held.claimed.id, None)
            metrics.run_ended("lost")
            log.warning("run %s: lease lost before it started; not started", held.claimed.run_id)

    def _task_version(self, task_id: uuid.UUID) -> str | None:
        held = self._tasks.get(task_id)
        return held[0] if held else None

    def _remember(self, tasks: dict[uuid.UUID, work.Versioned]) -> None:
        if len(self._tasks) + len(tasks) > TASK_CACHE:
            self._tasks.clear()
        self._tasks.update(tasks)

    def _done(self, due_work_id: int, _task: object) -> None:
        self.running.pop(due_work_id, None)
        self.wake.set()

    async def _until_next_due(self, default: float) -> float:
        async with db.statement(self.pool) as conn:
            at = await work.next_due(conn)
        if at is None:
            return default
        return max(0.0, min(default, (at - datetime.now(UTC)).total_seconds()))

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self.wake.clear()

    async def _drain(self, force: asyncio.Event, until: float) -> None:
        """Let running pipelines finish until `until` (or `force`)."""
        loop = asyncio.get_running_loop()
        forced = asyncio.create_task(force.wait())
        try:
            while self.running and not force.is_set() and loop.time() < until:
                pending = {r.task for r in self.running.values() if r.task}
                await asyncio.wait(
                    {*pending, forced},
                    timeout=until - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            forced.cancel()

    # -- one run -------------------------------------------------------------------------

    async def _run(self, held: Running, task: Task, event: Event | None) -> None:
        c = held.claimed
        steps = held.steps
        # This task's own context: every line logged for the run carries its ids.
        logs.task_id.set(c.task_id)
        logs.run_id.set(c.run_id)
        try:
            pipeline, view = self._pipeline(task)
            ex = Execution(
                task=view,
                pipeline=pipeline,
                run={
                    "id": str(c.run_id),
                    "attempt": c.attempt,
                    "scheduled_for": c.scheduled_for.isoformat(),
                },
                event=event,
                due_work_id=c.id,
                steps=steps,
            )
            await execute(
                ex,
                Toolbox(self.pool, run_id=c.run_id, allow=self.allow, mcp=self.mcp),
                log=lambda step_id, level, message: self._log(held, step_id, level, message),
                save=functools.partial(self._save, held),
                condition_state=task.condition_state,
                on_condition=lambda state: self._condition(task, state),
                on_step=functools.partial(self._step, held),
                deadline=held.started + self.settings.run_timeout_seconds,
                limits=self.limits,
            )
            await self._end(held, task, "succeeded", None, steps)
        except ConditionNotMet as exc:
            await self._end(held, task, "succeeded", exc.message, steps)
        except (StepFailed, InvalidInput) as exc:
            await self._end(held, task, "failed", exc.message, steps, retry=not exc.final)
        except RunTimedOut:
            message = f"the run took longer than {self.settings.run_timeout_seconds}s"
            await self._end(held, task, "timed_out", message, steps)
        except asyncio.CancelledError:
            await self._stopped(held, task, steps)
        except Exception as exc:
            log.exception("run %s failed inside the worker", c.run_id)
            await self._end(held, task, "failed", f"internal error: {exc}", steps)

    def _pipeline(self, task: Task) -> tuple[Pipeline, dict[str, JSONValue]]:
        """The task's parsed pipeline, and its view for templates.

        A payload changes only with the task's version; a title can change without one (a
        write that bumps no version), and then the task is read again: the view is kept
        only for the very task object it was made of.
        """
        key = (task.id, task.version)
        held = self._pipelines.get(key)
        if held is None:
            if len(self._pipelines) >= PIPELINE_CACHE:
                self._pipelines.clear()
            held = self._pipelines[key] = (load_pipeline(task.payload), task, task_view(task))
        elif held[1] is not task:
            held = self._pipelines[key] = (held[0], task, task_view(task))
        return held[0], held[2]

    async def _end(
        self,
        held: Running,
        task: Task,
        status: str,
        error: str | None,
        steps: list[dict[str, Any]],
        *,
        retry: bool = True,
    ) -> None:
        """Hand the outcome to the writer and wait for it: retry a failure while retries last
        (and `retry` says one could succeed)."""
        c = held.claimed
        end = End(held.lease, c.run_id, task, status, steps, error)
        if retry and status in ("failed", "timed_out") and c.attempt <= task.max_retries:
            delay = retry_delay(
                task.backoff_strategy,
                c.attempt,
                base_seconds=self.settings.retry_base_seconds,
                cap_seconds=self.settings.retry_cap_seconds,
            ).total_seconds()
            end.retry_delay = delay
            end.error = f"{error}; retrying in {delay:.1f}s"
        await self._write(held, end)

    async def _stopped(self, held: Running, task: Task, steps: list[dict[str, Any]]) -> None:
        c = held.claimed
        if held.stop_reason == "lost":
            metrics.run_ended("lost")
            log.warning("run %s: lease lost; stopped without writing", c.run_id)
        elif held.stop_reason == "cancel":
            error = "cancelled while running"
            await self._write(held, End(held.lease, c.run_id, task, "cancelled", steps, error))
        else:
            await self._write(held, End(held.lease, c.run_id, task, "queued", [], hand_back=True))

    async def _write(self, held: Running, end: End) -> None:
        held.ending = True
        self.wake.set()  # its slot is free for the next claim
        if not await self.outcomes.end(end):
            metrics.run_ended("lost")
            log.warning("run %s: its end was not recorded; its lease decides", end.run_id)
            return
        if end.hand_back:
            metrics.run_ended("handed_back")
            status = "queued"
        elif end.retry_delay is not None:
            metrics.run_ended("retrying")
            status = "failed"
        else:
            metrics.run_ended(end.status)
            status = end.status
        c = held.claimed
        if self.watched and c.task_id in self.watched:
            self.events.send(
                c.run_id,
                streams.state(c.run_id, c.task_id, status, c.attempt),
                final=not end.hand_back,
            )

    def _step(
        self, held: Running, index: int, record: dict[str, Any], seconds: float | None
    ) -> None:
        """A step started (seconds None) or ended: count it, and tell watchers if any."""
        if seconds is not None:
            metrics.step_ended(record["uses"], record["status"], seconds)
        c = held.claimed
        if self.watched and c.task_id in self.watched:
            self.events.send(c.run_id, streams.step(c.run_id, c.task_id, index, record))

    async def _log(self, held: Running, step_id: str | None, level: str, message: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("step %s: %s", step_id, message[:1000])
        async with db.connection(self.pool) as conn:
            log_id = await work.log(
                conn,
                held.lease,
                run_id=held.claimed.run_id,
                level=level if level in ("debug", "info", "warning", "error") else "info",
                step_id=step_id,
                message=message[:10_000],
            )
        c = held.claimed
        if log_id is not None and self.watched and c.task_id in self.watched:
            self.events.send(c.run_id, streams.log(c.run_id, c.task_id, log_id))

    def _save(self, held: Running, steps: list[dict[str, Any]]) -> None:
        """Note the run's steps so far; the writer stores them within about a second."""
        self.outcomes.progress(held.lease, held.claimed.run_id, steps)

    async def _condition(self, task: Task, state: bool) -> None:
        async with db.connection(self.pool) as conn:
            await work.set_condition_state(conn, task.id, state)

    # -- helpers running beside the loop -------------------------------------------------

    async def _keep(self, stop: asyncio.Event) -> None:
        """Renew leases every second (carrying cancel requests) and beat every few.

        Never dies: a renewal that fails, whatever the error, is tried again a second
        later, and meanwhile the lease watch gives up runs whose leases may have run out.
        """
        last_beat = 0.0
        renewing, beating = Trouble("renewing leases"), Trouble("beating the heartbeat")
        while True:
            try:
                await self._renew()
                self._db_ok()
                renewing.ok()
            except DatabaseUnavailable:
                self._db_failed()
            except Exception as exc:
                renewing.failed(exc)
            if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                try:
                    async with db.connection(self.pool) as conn:
                        await heartbeats.beat(
                            conn,
                            process_id=self.worker_id,
                            kind="worker",
                            hostname=socket.gethostname(),
                            pid=os.getpid(),
                        )
                    last_beat = time.monotonic()
                    beating.ok()
                except DatabaseUnavailable:
                    self._db_failed()
                except Exception as exc:
                    beating.failed(exc)
            await asyncio.sleep(KEEPER_SECONDS)

    async def _watch_leases(self) -> None:
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
                left = held.renewed + self.settings.lease_seconds - now
                if left <= 0:
                    self._lose(held)
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
                lease_seconds=self.settings.lease_seconds,
            )
        for due_work_id, running in held.items():
            state = kept.get(due_work_id)
            if state is None or state[0] != running.lease.attempt:
                self._lose(running)
                continue
            if state[2]:
                running.renewed = max(running.renewed, sent)
            if state[1]:
                running.stop("cancel")

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on a connection of its own; a lost notification only delays (we also poll)."""
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
                            self._watch(note.payload)
            except (psycopg.Error, OSError) as exc:
                log.debug("the listening connection failed (%s); reconnecting", exc)
                await asyncio.sleep(1.0)

    def _watch(self, payload: str) -> None:
        """An API process announced watched tasks: new watchers get what we hold of them."""
        for task_id in self.watched.heard(payload):
            for held in list(self.running.values()):
                c = held.claimed
                if c.task_id == task_id and not held.ending:
                    self.events.send(
                        c.run_id,
                        streams.snapshot(c.run_id, c.task_id, "running", c.attempt, held.steps),
                    )

    def _db_failed(self) -> None:
        if not self._db_down:
            log.warning("database unavailable; the worker keeps retrying")
        self._db_down = True

    def _db_ok(self) -> None:
        if self._db_down:
            log.info("database is back")
        self._db_down = False


class Trouble:
    """A loop's run of unexpected errors: the first is logged with its traceback and what
    to do, the rest are counted; the pause before the next try grows with the run."""

    def __init__(self, doing: str) -> None:
        self.doing = doing
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Note an error; how long to pause before trying again."""
        self.failures += 1
        if self.failures == 1:
            log.error("%s failed: %s; %s", self.doing, exc, db.advice(exc), exc_info=exc)
        elif self.failures % 100 == 0:
            log.error("%s has failed %s times in a row: %s", self.doing, self.failures, exc)
        return ERROR_PAUSES[min(self.failures, len(ERROR_PAUSES)) - 1]

    def ok(self) -> None:
        if self.failures:
            log.info("%s works again (after %s failures)", self.doing, self.failures)
        self.failures = 0


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
        self._queue: list[tuple[uuid.UUID, str, bool]] = []
        self._wake = asyncio.Event()
        self._failing = False

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


def _hub(registry: ToolRegistry) -> McpHub | None:
    """The MCP hub, or None without servers: the SDK (about 13 MB) is loaded only when used."""
    if not registry.servers:
        return None
    from pao.mcp import McpHub

    return McpHub(registry.servers)
