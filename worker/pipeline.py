"""Running a task's pipeline: steps in order, templates looked up in one pass.

A step's output is stored on the run as it ends, so `GET /runs/{id}` shows
progress. A failed step fails the run; the caller decides about retries.

Those stored records are the run's checkpoints: an attempt given `Execution.resume` (the
steps an earlier attempt, or this run before it was handed back, saved) reuses the outputs
of the steps that succeeded, in pipeline order, and runs from the first one that did not.
A step skipped by its `if` is not a checkpoint: its `if` is evaluated again, and if it is
still false the resume goes on past it. A remote step (a task type's) is not run here: it
raises `Waiting`, and the caller offers it and lets the run wait without a worker.

Sizes are capped (`Limits`): a step's input is counted while it is rendered and the
render stops past PAO_STEP_INPUT_MAX_BYTES; an output past PAO_STEP_OUTPUT_MAX_BYTES is
not kept; and a run holds at most `Limits.run_max_bytes` of both. Over a cap the step
fails for good (the same data would fail the same way on a retry), and the worker,
having built nothing that large, goes on with its other runs.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, cast

from pao import costs
from pao.errors import PaoError
from pao.models import Event, StepRecord, Task
from pao.pipeline import Pipeline
from pao.templates import (
    Budget,
    JSONValue,
    TemplateError,
    TooLarge,
    json_size,
    parse_guard,
    render,
)
from pao.vocabulary import StepStatus
from worker.limits import RUN_MAX_BYTES, RUN_OUTPUTS, Limits

DEFAULT_STEP_TIMEOUT = 300.0
# Bound once: a member looked up on its enum class costs 0.2 µs (Python 3.11), each step.
_RUNNING, _SUCCEEDED, _FAILED = StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


class StepFailed(PaoError):
    """A step failed; the run fails with this message."""

    def __init__(self, message: str | None = None, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final  # the tool's error says a retry cannot succeed (`PaoError.final`)


class RunTimedOut(PaoError):
    """The run's deadline (PAO_RUN_TIMEOUT) passed; the step running then was stopped."""

    def __init__(self) -> None:
        super().__init__("the run's deadline passed")


class ConditionNotMet(PaoError):
    """The condition guard did not turn from false to true: the rest does not run."""


class RemoteStep(Exception):
    """Raised by the tool of a step done outside pao (a task type): offer it instead."""

    def __init__(self, task_type: str) -> None:
        super().__init__(task_type)
        self.task_type = task_type


class Waiting(Exception):
    """The pipeline reached a remote step: offer it, and let the run wait for it.

    `ex.steps` ends with the step's record, status `waiting`, its input rendered (and
    within the size caps); `seconds` is how long the step may take (its timeout, cut to
    what is left of the run's deadline).
    """

    def __init__(self, index: int, record: StepRecord, task_type: str, seconds: float) -> None:
        super().__init__(task_type)
        self.index = index
        self.record = record
        self.task_type = task_type
        self.seconds = seconds


@dataclass
class StepCall:
    """What a tool learns about the step calling it."""

    step_id: str
    idempotency_key: str
    log: Callable[[str, str], Awaitable[None]]


Tool = Callable[[dict[str, Any], StepCall], Awaitable[JSONValue]]


class RunHooks(Protocol):
    """What a run tells its caller as it goes: one object per run, so a step costs no
    callbacks of its own. `on_step` and `save` must not block."""

    def on_step(self, index: int, record: StepRecord, seconds: float | None) -> None:
        """A step started (seconds None) or ended (the seconds it ran)."""

    def save(self, steps: list[StepRecord]) -> None:
        """The run's steps so far, to be stored."""

    async def log(self, step_id: str | None, level: str, message: str) -> None:
        """A tool's log line."""

    async def on_condition(self, state: bool) -> None:
        """The pipeline's condition was evaluated after the first step: remember it."""

    def cost_of(self, uses: str) -> Decimal | None:
        """What one call of the tool costs as declared now; None (or 0): free."""

    async def charge(self, step_id: str, uses: str, cost: Decimal) -> None:
        """Charge a paid step before it starts; StepFailed (final) if a budget refuses it."""

    def now(self) -> datetime:
        """The database's time now, which a step's `started_at` is stamped with."""


@dataclass
class Execution:
    task: dict[str, JSONValue]  # as templates see it: `task_view(task)`, which callers may keep
    pipeline: Pipeline
    run: dict[str, JSONValue]
    event: Event | None
    due_work_id: int
    steps: list[StepRecord] = field(default_factory=list)
    condition_state: bool | None = None  # the condition's value at the last run
    deadline: float | None = None  # `time.monotonic()` when the whole run must have ended
    # Checkpoints to resume after: (the attempt that saved them, its step records).
    resume: tuple[int, list[Any]] | None = None


def storable(value: Any) -> JSONValue:
    """A JSON value PostgreSQL's jsonb accepts: no NUL, no lone surrogates, no NaN."""
    if isinstance(value, str):
        # An ASCII string holds no surrogate: most need only the NUL test, in C.
        if value.isascii() and "\x00" not in value:
            return value
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(storable(str(k))): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return storable(str(value))


def task_view(task: Task) -> dict[str, JSONValue]:
    """The task as templates see it (`${task.title}`)."""
    return {
        "id": str(task.id),
        "title": task.title,
        "payload": task.payload,
        "created_by": str(task.created_by),
    }


def checkpoints(ex: Execution) -> tuple[int, dict[str, StepRecord]] | None:
    """The saved records a resumed attempt may reuse, by step id: those that succeeded.

    A condition task's check is reused only if the condition passed (a later step has a
    record): the rest was decided on for this occurrence, and checking again would find
    the condition already true (remembered) and stop. A check that failed runs again.
    """
    if ex.resume is None:
        return None
    attempt, records = ex.resume
    done: dict[str, StepRecord] = {}
    for r in records:
        if isinstance(r, dict) and r.get("status") == _SUCCEEDED and "output" in r:
            done[r["id"]] = cast(StepRecord, r)
    steps = ex.pipeline.steps
    if ex.pipeline.condition is not None and steps and len(records) < 2:
        done.pop(steps[0].id, None)
    return (attempt, done) if done else None


def _context(ex: Execution, outputs: dict[str, JSONValue]) -> dict[str, JSONValue]:
    """What templates may look up; `steps` is the live dict of outputs so far."""
    context: dict[str, JSONValue] = {
        "steps": outputs,
        "run": ex.run,
        "task": ex.task,
    }
    if ex.event is not None:
        context["event"] = {
            "id": str(ex.event.id),
            "type": ex.event.type,
            "payload": ex.event.payload,
        }
    return context


async def execute(
    ex: Execution, tools: Callable[[str], Tool], hooks: RunHooks, *, limits: Limits
) -> None:
    """Run every step; raise StepFailed on the first failure, ConditionNotMet to stop early.

    `ex.deadline` bounds the whole run: each step's own timeout is cut to what is left of
    it, and RunTimedOut is raised when that cut one runs out. One limit per step serves
    both, which is cheaper than a second one around the run. The `limits` are the
    worker's, shared by all its runs.
    """
    outputs: dict[str, JSONValue] = {}
    context = _context(ex, outputs)  # sees each new output: `steps` is `outputs` itself
    hook, save, log, deadline = hooks.on_step, hooks.save, hooks.log, ex.deadline
    cost_of = hooks.cost_of
    attempt = ex.run.get("attempt")
    held = 0  # bytes of the inputs and outputs this run keeps (and will store)
    saved = checkpoints(ex)  # None for a first attempt: the loop below pays nothing
    for index, step in enumerate(ex.pipeline.steps):
        if saved is not None:
            done = saved[1].get(step.id)
            if done is not None and done.get("uses") == step.uses:
                reused: StepRecord = {**done, "resumed_from": done.get("resumed_from", saved[0])}
                if reused["resumed_from"] != attempt:
                    reused.pop("cost", None)  # charged to the attempt that ran it
                ex.steps.append(reused)
                hook(len(ex.steps) - 1, reused, None)
                output = reused.get("output")
                held += json_size(output, limits.run_max_bytes)
                outputs[step.id] = output
                if step.save_as:
                    outputs[step.save_as] = output
                continue
        record: StepRecord = {
            "id": step.id,
            "uses": step.uses,
            "status": _RUNNING,
            "started_at": hooks.now().isoformat(),
        }
        if step.if_ is not None:
            try:
                wanted = parse_guard(step.if_).evaluate(context)
            except TemplateError as exc:
                raise _fail(ex, record, f"step {step.id}: its 'if' failed: {exc}", hook) from None
            if not wanted:
                record["status"] = StepStatus.SKIPPED
                record["detail"] = f"'if' was false: {step.if_}"
                ex.steps.append(record)
                hook(len(ex.steps) - 1, record, 0.0)
                save(ex.steps)
                continue  # still resuming: the next step may have a checkpoint
        saved = None  # this step runs: the steps after it run too
        budget = Budget(limits.step_input_max_bytes)
        try:
            args = render(step.with_, context, budget=budget)
        except TooLarge as exc:
            message = _input_too_large(step.id, exc)
            raise _fail(ex, record, message, hook, final=True) from None
        except TemplateError as exc:
            raise _fail(ex, record, f"step {step.id}: {exc}", hook) from None
        assert isinstance(args, dict)
        held += budget.spent
        if held > limits.run_max_bytes:
            raise _fail(ex, record, _run_too_large(step.id, limits, held), hook, final=True)
        step_timeout = float(step.timeout_seconds or DEFAULT_STEP_TIMEOUT)
        cost = cost_of(step.uses)
        if cost:
            # Charged before it starts: a step a budget refuses never starts (StepFailed).
            # A charge the database refuses for now is tried again (Hooks.charge), for as
            # long as the step itself may take.
            bound = step_timeout
            if deadline is not None:
                bound = min(step_timeout, deadline - time.monotonic())
            try:
                with limits.within(max(bound, 0.0)):
                    await hooks.charge(step.id, step.uses, cost)
            except TimeoutError:
                if bound < step_timeout:
                    _fail(ex, record, f"step {step.id}: stopped at the run's deadline", hook)
                    raise RunTimedOut() from None
                message = f"step {step.id}: could not be charged within {step_timeout:g}s"
                raise _fail(ex, record, message, hook) from None
            record["cost"] = costs.text(cost)
        # Already storable: rendered from stored JSON and from outputs made storable below.
        record["input"] = args
        ex.steps.append(record)
        hook(len(ex.steps) - 1, record, None)
        save(ex.steps)

        async def step_log(level: str, message: str, step_id: str = step.id) -> None:
            await log(step_id, level, message)

        call = StepCall(step.id, f"{ex.due_work_id}:{step.id}", step_log)
        started = time.monotonic()
        timeout = step_timeout if deadline is None else min(step_timeout, deadline - started)
        if timeout <= 0:
            raise RunTimedOut()
        try:
            with limits.within(timeout):
                result = await tools(step.uses)(args, call)
        except TimeoutError:
            if timeout < step_timeout:
                _fail(ex, record, f"step {step.id}: stopped at the run's deadline", hook, started)
                raise RunTimedOut() from None
            message = f"step {step.id}: timed out after {step_timeout:g}s"
            raise _fail(ex, record, message, hook, started) from None
        except PaoError as exc:
            message = f"step {step.id}: {exc.message}"
            raise _fail(ex, record, message, hook, started, final=exc.final) from None
        except RemoteStep as remote:
            record["status"] = StepStatus.WAITING
            hook(len(ex.steps) - 1, record, None)
            raise Waiting(index, record, remote.task_type, timeout) from None
        except asyncio.CancelledError:
            # The stored record keeps its state; only the watchers learn the step was stopped.
            stopped: StepRecord = {**record, "status": StepStatus.CANCELLED}
            hook(len(ex.steps) - 1, stopped, time.monotonic() - started)
            raise
        # Measured before it is copied to be stored: what is over the cap is not kept.
        size = json_size(result, limits.step_output_max_bytes)
        if size > limits.step_output_max_bytes:
            message = (
                f"step {step.id}: its output is more than {limits.step_output_max_bytes} bytes "
                f"(at least {size}); PAO_STEP_OUTPUT_MAX_BYTES sets the limit. Ask the tool "
                "for less (http.request's max_bytes, say)"
            )
            raise _fail(ex, record, message, hook, started, final=True)
        held += size
        if held > limits.run_max_bytes:
            message = _run_too_large(step.id, limits, held)
            raise _fail(ex, record, message, hook, started, final=True)
        output = storable(result)
        del result
        took = time.monotonic() - started
        record["status"] = _SUCCEEDED
        record["output"] = output
        record["duration_ms"] = int(took * 1000)
        hook(len(ex.steps) - 1, record, took)
        outputs[step.id] = output
        if step.save_as:
            outputs[step.save_as] = output
        if index < len(ex.pipeline.steps) - 1:
            save(ex.steps)  # the last step's result is written with the run's end
        if index == 0 and ex.pipeline.condition is not None:
            try:
                now_true = parse_guard(ex.pipeline.condition).evaluate(context)
            except TemplateError as exc:
                raise StepFailed(f"the condition failed: {exc}") from None
            try:
                with limits.within(step_timeout):
                    await hooks.on_condition(now_true)
            except TimeoutError:
                message = f"the condition's state could not be saved within {step_timeout:g}s"
                raise StepFailed(message) from None
            if not (now_true and ex.condition_state is not True):
                raise ConditionNotMet(
                    f"condition is {str(now_true).lower()} (was {ex.condition_state}); "
                    "the rest runs only when it turns from false to true"
                )


def _input_too_large(step_id: str, exc: TooLarge) -> str:
    at = ".".join(["with", *(str(seg) for seg in exc.where)])
    by = f" by {exc.lookup}" if exc.lookup else ""
    return (
        f"step {step_id}: its input is more than {exc.limit} bytes once rendered (rendering "
        f"stopped at {exc.size}, at {at}{by}); PAO_STEP_INPUT_MAX_BYTES sets the limit. "
        "Pass a part of an earlier result, such as ${steps.<id>.<field>}, not all of it"
    )


def _run_too_large(step_id: str, limits: Limits, held: int) -> str:
    return (
        f"step {step_id}: the run's steps would hold more than {limits.run_max_bytes} bytes "
        f"of inputs and outputs (at least {held}); a run holds at most "
        f"{RUN_OUTPUTS} times PAO_STEP_OUTPUT_MAX_BYTES, and {RUN_MAX_BYTES} bytes at most. "
        "Split the work into tasks chained by events"
    )


def _fail(
    ex: Execution,
    record: StepRecord,
    message: str,
    hook: Callable[[int, StepRecord, float | None], None],
    started: float | None = None,
    *,
    final: bool = False,
) -> StepFailed:
    record["status"] = _FAILED
    record["error"] = message
    if record not in ex.steps:
        ex.steps.append(record)
    hook(ex.steps.index(record), record, 0.0 if started is None else time.monotonic() - started)
    return StepFailed(message, final=final)
