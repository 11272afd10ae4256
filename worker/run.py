"""One run: build its execution, run the pipeline, and hand its end to the writer.

A run's end counts once the writer has stored it (`worker.outcomes`); until then
the run keeps its lease. A failure with retries left ends this attempt and queues
the next after the task's backoff; a stopped run is cancelled, given up (its lease
was lost: nothing is written) or handed back unspent (the worker is stopping).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar

from psycopg_pool import AsyncConnectionPool

from pao import costs, db, logs
from pao.backoff import retry_delay
from pao.clock import Clock
from pao.domain import budgets, claims
from pao.errors import DatabaseUnavailable, InvalidInput, TaskTypeUnavailable
from pao.models import Event, StepRecord, Task
from pao.pipeline import RESUME_FROM_START, Pipeline, load_pipeline
from pao.settings import Settings
from pao.store import task_types, work
from pao.templates import JSONValue
from pao.vocabulary import LogLevel, RunStatus, StepStatus, WorkState
from worker import metrics
from worker.http_tool import Allow
from worker.leases import Leases, Running
from worker.limits import Limits
from worker.outcomes import RETRY_SECONDS, End, Outcomes
from worker.pipeline import (
    ConditionNotMet,
    Execution,
    RunTimedOut,
    StepFailed,
    Waiting,
    execute,
    task_view,
)
from worker.run_events import RunEvents
from worker.tools import FileLimits, Toolbox

if TYPE_CHECKING:
    from pao.mcp import McpHub

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _for_now(
    attempt: Callable[[], Awaitable[T]], *, doing: str, warn: str, give_up: float = math.inf
) -> tuple[T, int]:
    """`attempt` (one transaction) tried again while it fails for now, the database away
    or a statement refused, with the outcome writer's backoff: a failover of a few seconds
    must not fail a step. Returns its result and how many tries failed first; StepFailed
    once the next try would come after `give_up` (time.monotonic). A try whose answer was
    lost after it committed is made again: each caller says what that costs."""
    tries = 0
    while True:
        try:
            return await attempt(), tries
        except Exception as exc:
            if not (isinstance(exc, DatabaseUnavailable) or db.is_transient(exc)):
                raise
            delay = RETRY_SECONDS[min(tries, len(RETRY_SECONDS) - 1)]
            tries += 1
            if time.monotonic() + delay > give_up:
                raise StepFailed(f"could not be {doing} in its time: {exc}") from exc
            log.warning("%s (%s); retrying in %.1fs", warn, exc, delay)
            await asyncio.sleep(delay)


PIPELINE_CACHE = 10_000
LOG_LEVELS = frozenset(LogLevel)
# A failure a retry may mend (if retries are left and the error is not final).
RETRYABLE = frozenset((RunStatus.FAILED, RunStatus.TIMED_OUT))
# Bound once: a member looked up on its enum class costs 0.2 µs (Python 3.11), each run.
_SUCCEEDED, _FAILED = RunStatus.SUCCEEDED, RunStatus.FAILED


class Runner:
    """Runs what the worker claims, each as an asyncio task of its own."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[db.Conn],
        *,
        leases: Leases,
        wake: asyncio.Event,
        outcomes: Outcomes,
        events: RunEvents,
        mcp: McpHub | None,
        clock: Clock,
        costs: Callable[[str], Decimal | None] = lambda uses: None,
    ) -> None:
        self.settings = settings
        self.clock = clock  # the database's (measured by the claim loop)
        self.costs = costs  # what a call of a tool costs (PAO_TOOL_COSTS, the tools file)
        self.pool = pool
        self.leases = leases
        self.wake = wake  # the claim loop's: set whenever a slot frees
        self.outcomes = outcomes
        self.events = events
        self.mcp = mcp
        self.allow = Allow.parse(settings.http_allow)
        self.limits = Limits.of(settings)
        self.files = FileLimits.of(settings)
        # By task and version: the parsed pipeline, and the task row its view was made of.
        self._pipelines: dict[
            tuple[uuid.UUID, int], tuple[Pipeline, Task, dict[str, JSONValue]]
        ] = {}

    def start(self, held: Running, task: Task, event: Event | None) -> None:
        """Start a held run; it is let go of once its task is done."""
        held.task = asyncio.create_task(self._run(held, task, event))
        held.task.add_done_callback(functools.partial(self._done, held.claimed.id))

    def _done(self, due_work_id: int, _task: object) -> None:
        self.leases.running.pop(due_work_id, None)
        self.wake.set()

    async def _run(self, held: Running, task: Task, event: Event | None) -> None:
        c = held.claimed
        steps = held.steps
        # This task's own context: every line logged for the run carries its ids.
        logs.task_id.set(c.task_id)
        logs.run_id.set(c.run_id)
        try:
            pipeline, view = self._pipeline(task)
            # Only a later attempt or a run claimed again looks for checkpoints.
            resume = None
            if c.attempt > 1 or c.saved_steps:
                resume = await self._checkpoints(c, pipeline)
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
                condition_state=task.condition_state,
                deadline=held.started + self.settings.run_timeout_seconds - _spent(c, self.clock()),
                resume=resume,
            )
            await execute(
                ex,
                Toolbox(
                    self.pool,
                    run_id=c.run_id,
                    allow=self.allow,
                    mcp=self.mcp,
                    lease=held.lease,
                    files=self.files,
                ),
                Hooks(self, held, task),
                limits=self.limits,
            )
            await self._end(held, task, _SUCCEEDED, None, steps)
        except Waiting as waiting:
            try:
                await self._wait(held, task, waiting, steps)
            except asyncio.CancelledError:
                # Stopped before the wait was written: handed back or cancelled as any run
                # (once written, the fenced end matches no row and changes nothing).
                await self._stopped(held, task, steps)
        except ConditionNotMet as exc:
            await self._end(held, task, _SUCCEEDED, exc.message, steps)
        except (StepFailed, InvalidInput) as exc:
            await self._end(held, task, _FAILED, exc.message, steps, retry=not exc.final)
        except RunTimedOut:
            message = f"the run took longer than {self.settings.run_timeout_seconds}s"
            await self._end(held, task, RunStatus.TIMED_OUT, message, steps)
        except asyncio.CancelledError:
            await self._stopped(held, task, steps)
        except Exception as exc:
            log.exception("run %s failed inside the worker", c.run_id)
            await self._end(held, task, _FAILED, f"internal error: {exc}", steps)

    async def _checkpoints(
        self, c: work.Claimed, pipeline: Pipeline
    ) -> tuple[int, list[StepRecord]] | None:
        """What a later attempt, or a run claimed again, resumes after: the run's own saved
        steps (claimed again), else those of the latest earlier attempt that saved any.

        With `payload.resume` "from_start" every attempt starts over, but a run continued
        after its remote step ended is the same attempt going on: it always resumes.
        """
        saved = c.saved_steps
        if saved:
            if pipeline.resume == RESUME_FROM_START and not _continued(saved):
                return None
            return c.attempt, saved
        if pipeline.resume == RESUME_FROM_START:
            return None
        async with db.connection(self.pool) as conn:
            return await work.previous_steps(conn, due_work_id=c.id, attempt=c.attempt)

    async def _wait(
        self, held: Running, task: Task, waiting: Waiting, steps: list[StepRecord]
    ) -> None:
        """Offer the remote step and let the run wait for it without this worker. The offer
        (`_offer`) that fails for now, the database away or a statement refused, is tried
        again for as long as the step itself may take: the lease is renewed meanwhile, and
        the lease watch stops the run if it may have run out. A try whose answer was lost
        after it committed leaves the next one finding the lease gone, which changes nothing.
        The step's end continues the run (`pao.domain.claims`)."""
        c = held.claimed
        record = waiting.record
        self.outcomes.forget(c.id)  # progress written later could not apply anyway
        try:
            (state, charged), tries = await _for_now(
                lambda: self._offer(held, task, waiting, steps),
                doing="offered",
                warn=f"run {c.run_id}: cannot offer remote step {record['id']} yet, "
                "its lease renewed meanwhile",
                give_up=time.monotonic() + waiting.seconds,
            )
        except (StepFailed, TaskTypeUnavailable, InvalidInput) as exc:
            message = exc.message
            if not message.startswith(f"step {record['id']}"):
                message = f"step {record['id']}: {message}"
            record.pop("cost", None)  # rolled back with the offer
            record["status"] = StepStatus.FAILED
            record["error"] = message
            await self._end(held, task, _FAILED, message, steps, retry=not exc.final)
            return
        if charged is not None:
            self._charged(c, record["id"], *charged)
        if state is None:
            metrics.run_ended("lost")
            # After a failed try, that try may have committed the offer before its answer
            # was lost: then the lease is gone because the run waits.
            lost = (
                "the lease is gone: an earlier try offered the remote step and lost its answer, "
                "or the lease ran out"
                if tries
                else "lease lost before its remote step was offered"
            )
            log.warning("run %s: %s", c.run_id, lost)
        elif state is False:  # a cancel was asked for: the step is not offered
            steps.remove(record)
            error = f"cancelled before remote step {record['id']} was offered"
            end = End(held.lease, c.run_id, task, RunStatus.CANCELLED, steps, error)
            await self._write(held, end)
        else:
            held.ending = True  # no longer this worker's: nothing to renew or stop
            metrics.run_ended(WorkState.WAITING)
            log.info(
                "run %s: waiting for remote step %s (%s)",
                c.run_id,
                record["id"],
                waiting.task_type,
            )

    async def _offer(
        self, held: Running, task: Task, waiting: Waiting, steps: list[StepRecord]
    ) -> tuple[bool | None, tuple[Decimal, Decimal] | None]:
        """One try at the offer, in one transaction fenced by the lease: whether the run now
        waits (None: the lease is gone; False: a cancel was asked for, nothing offered), and
        what was charged for the step (its cost, the run's), None when nothing was."""
        c = held.claimed
        record = waiting.record
        charged: tuple[Decimal, Decimal] | None = None
        try:
            async with db.connection(self.pool) as conn:
                found = await task_types.get(conn, waiting.task_type)
                if found is None:
                    raise StepFailed(
                        f"step {record['id']}: tool {waiting.task_type!r} cannot run here: it "
                        "is not a built-in tool, no MCP server of this worker's PAO_TOOLS_FILE "
                        "by that name, and no task type (GET /task-types lists them)"
                    )
                if found.is_active and found.cost_per_call:
                    # Charged before it is offered, in the offer's transaction (still under
                    # the lease): a step a budget refuses is never offered, and one that is
                    # not offered after all is not charged. Its reported cost replaces this.
                    total = await self._charge(conn, held, task, record["id"], found.cost_per_call)
                    charged = (found.cost_per_call, total)
                state = await work.wait(conn, held.lease, seconds=max(waiting.seconds, 1.0))
                if state is not True and charged is not None:
                    raise _NotOffered(state)  # rolls the charge back with the transaction
                if state is True:
                    if charged is not None:
                        record["cost"] = costs.text(charged[0])
                    offered = await claims.offer_step(
                        conn,
                        run_id=c.run_id,
                        step_index=waiting.index,
                        step_id=record["id"],
                        task_type=waiting.task_type,
                        parameters=record.get("input", {}),
                    )
                    if offered is not None:
                        record["remote_step"] = offered
                    await work.save_waiting_steps(conn, run_id=c.run_id, steps=steps)
        except _NotOffered as not_offered:
            return not_offered.state, None
        return state, charged

    async def _charge(
        self, conn: db.Conn, held: Running, task: Task, step_id: str, cost: Decimal
    ) -> Decimal:
        """Charge a step in the caller's transaction; the run's cost so far. StepFailed if it
        may not start (final when a budget refuses it: the same step would be refused
        again). Tell `_charged` once the transaction has committed."""
        c = held.claimed
        charged = await budgets.charge(
            conn,
            budgets.Charge(
                owner=task.created_by,
                run_id=c.run_id,
                step_id=step_id,
                cost=cost,
                budget_per_run=task.budget_per_run,
                worker_id=held.lease.worker_id,
            ),
            now=self.clock(),
            default_timezone=self.settings.default_timezone,
        )
        if charged is None:
            raise StepFailed(f"step {step_id}: the run's lease was lost before it was charged")
        if isinstance(charged, budgets.Refusal):
            metrics.budget_refused()
            raise StepFailed(charged.detail, final=True)
        return charged

    def _charged(self, c: work.Claimed, step_id: str, cost: Decimal, total: Decimal) -> None:
        """A charge committed: count it, and tell the run's watchers."""
        metrics.cost(cost)
        self.events.cost(c, step_id, cost, total)

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
        status: RunStatus,
        error: str | None,
        steps: list[StepRecord],
        *,
        retry: bool = True,
    ) -> None:
        """Hand the outcome to the writer and wait for it: retry a failure while retries last
        (and `retry` says one could succeed)."""
        c = held.claimed
        end = End(held.lease, c.run_id, task, status, steps, error)
        if retry and status in RETRYABLE and c.attempt <= task.max_retries:
            delay = retry_delay(
                task.backoff_strategy,
                c.attempt,
                base_seconds=self.settings.retry_base_seconds,
                cap_seconds=self.settings.retry_cap_seconds,
            ).total_seconds()
            end.retry_delay = delay
            end.error = f"{error}; retrying in {delay:.1f}s"
        await self._write(held, end)

    async def _stopped(self, held: Running, task: Task, steps: list[StepRecord]) -> None:
        c = held.claimed
        if held.stop_reason == "lost":
            metrics.run_ended("lost")
            log.warning("run %s: lease lost; stopped without writing", c.run_id)
        elif held.stop_reason == "cancel":
            error = "cancelled while running"
            end = End(held.lease, c.run_id, task, RunStatus.CANCELLED, steps, error)
            await self._write(held, end)
        else:
            # Handed back with its checkpoints: the next claim resumes after them.
            done = [s for s in steps if s.get("status") == StepStatus.SUCCEEDED]
            end = End(held.lease, c.run_id, task, RunStatus.QUEUED, done, hand_back=True)
            await self._write(held, end)

    async def _write(self, held: Running, end: End) -> None:
        held.ending = True
        self.wake.set()  # its slot is free for the next claim
        if not await self.outcomes.end(end):
            metrics.run_ended("lost")
            log.warning("run %s: its end was not recorded; its lease decides", end.run_id)
            return
        if end.hand_back:
            metrics.run_ended("handed_back")
            status = RunStatus.QUEUED
        elif end.retry_delay is not None:
            metrics.run_ended("retrying")
            status = _FAILED
        else:
            metrics.run_ended(end.status)
            status = end.status
        self.events.state(held.claimed, status, final=not end.hand_back)


class _NotOffered(Exception):
    """The run was not moved to waiting (a cancel was asked for, or the lease was lost):
    the offer's transaction, charge and all, is rolled back."""

    def __init__(self, state: bool | None) -> None:
        super().__init__(state)
        self.state = state


def _spent(c: work.Claimed, now: datetime) -> float:
    """Seconds of the run's deadline already spent by `now` (the database's clock, which
    stamped `started_at`): a run continued after its remote step keeps its first start (a
    fresh or handed-back run starts now, and has spent none)."""
    if not c.saved_steps or c.started_at is None:
        return 0.0
    return max(0.0, (now - c.started_at).total_seconds())


def _continued(saved: list[StepRecord]) -> bool:
    """Whether a run's saved steps end with a remote step that succeeded: the run is being
    continued after it, not started again."""
    last = saved[-1] if saved else None
    return (
        isinstance(last, dict)
        and "remote_step" in last
        and last.get("status") == StepStatus.SUCCEEDED
    )


class Hooks:
    """A run's `RunHooks`: what its steps tell the worker, its writer and its watchers."""

    __slots__ = ("held", "runner", "task")

    def __init__(self, runner: Runner, held: Running, task: Task) -> None:
        self.runner = runner
        self.held = held
        self.task = task

    def now(self) -> datetime:
        return self.runner.clock()

    def on_step(self, index: int, record: StepRecord, seconds: float | None) -> None:
        """A step started (seconds None) or ended: count it, and tell watchers if any."""
        if seconds is not None:
            metrics.step_ended(record["uses"], record["status"], seconds)
        self.runner.events.step(self.held.claimed, index, record)

    def save(self, steps: list[StepRecord]) -> None:
        """Note the run's steps so far; the writer stores them within about a second."""
        self.runner.outcomes.progress(self.held.lease, self.held.claimed.run_id, steps)

    async def log(self, step_id: str | None, level: str, message: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("step %s: %s", step_id, message[:1000])
        held = self.held

        async def write() -> int | None:
            async with db.connection(self.runner.pool) as conn:
                return await work.log(
                    conn,
                    held.lease,
                    run_id=held.claimed.run_id,
                    level=level if level in LOG_LEVELS else LogLevel.INFO,
                    step_id=step_id,
                    message=message[:10_000],
                )

        # Until the step's own timeout stops it; a line whose answer was lost may be
        # written twice.
        log_id, _ = await _for_now(
            write, doing="logged", warn=f"run {held.claimed.run_id}: cannot write a log line yet"
        )
        if log_id is not None:
            self.runner.events.log(held.claimed, log_id)

    async def on_condition(self, state: bool) -> None:
        async def write() -> None:
            async with db.connection(self.runner.pool) as conn:
                await work.set_condition_state(conn, self.task.id, state)

        # Until the step's timeout stops it (execute); writing the state twice is harmless.
        await _for_now(
            write, doing="saved", warn=f"task {self.task.id}: cannot save its condition yet"
        )

    def cost_of(self, uses: str) -> Decimal | None:
        return self.runner.costs(uses)

    async def charge(self, step_id: str, uses: str, cost: Decimal) -> None:
        async def write() -> Decimal:
            async with db.connection(self.runner.pool) as conn:
                return await self.runner._charge(conn, self.held, self.task, step_id, cost)

        # Until the step's timeout stops it (execute). A charge whose answer was lost after
        # it committed is charged again: the run and its owner are charged twice, never
        # less, so no budget is overrun.
        total, _ = await _for_now(
            write, doing="charged", warn=f"run {self.held.claimed.run_id}: cannot charge a step yet"
        )
        self.runner._charged(self.held.claimed, step_id, cost, total)
