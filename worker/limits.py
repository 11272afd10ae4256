"""Time and size limits for every step a worker runs; the time limits kept by one timer.

`asyncio.timeout` arms and cancels a loop timer of its own for each step: about 5 µs on
uvloop, a tenth of the CPU a draining worker spends on a one-step run. Here starting and
ending a limit is a set insert and removal; one timer looks over the steps in flight
every `TICK` while there are any, so a limit fires up to `TICK` late (step and run limits
are whole seconds). Semantics are asyncio.timeout's: the step's task is cancelled and
TimeoutError raised out of the block, unless something else cancelled the task too.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from pao.settings import Settings

TICK = 0.02
# What one run may hold of its steps' inputs and outputs together, as a multiple of the
# output cap, and at most: a run's steps are stored as one jsonb value, which PostgreSQL
# refuses past 255 MiB (a run that cannot be stored would be retried by worker after
# worker, each holding it in memory first).
RUN_OUTPUTS = 4
RUN_MAX_BYTES = 192 * 1024 * 1024


class Limits:
    """The limits of the steps in flight on one event loop.

    Sizes are in bytes of compact JSON (`pao.templates.json_size`): a step's rendered
    input, its output, and everything one run holds (`run_max_bytes`, RUN_OUTPUTS times
    the output cap, at most RUN_MAX_BYTES).
    """

    def __init__(
        self,
        *,
        step_input_max_bytes: int = Settings.step_input_max_bytes,
        step_output_max_bytes: int = Settings.step_output_max_bytes,
    ) -> None:
        self._active: set[Limit] = set()
        self._sweeping: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one `_sweeping` runs on
        self.step_input_max_bytes = step_input_max_bytes
        self.step_output_max_bytes = step_output_max_bytes
        self.run_max_bytes = min(RUN_OUTPUTS * step_output_max_bytes, RUN_MAX_BYTES)

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits PAO_STEP_INPUT_MAX_BYTES and PAO_STEP_OUTPUT_MAX_BYTES set."""
        return cls(
            step_input_max_bytes=settings.step_input_max_bytes,
            step_output_max_bytes=settings.step_output_max_bytes,
        )

    def within(self, seconds: float) -> Limit:
        """`with limits.within(s):` raises TimeoutError when its body outlasts `s` (a plain
        `with`: entering and leaving awaits nothing, and spares two coroutines a step)."""
        return Limit(self, seconds)

    def _start(self, limit: Limit, loop: asyncio.AbstractEventLoop) -> None:
        self._active.add(limit)
        if self._sweeping is None or self._loop is not loop:
            self._loop = loop
            self._sweeping = loop.call_later(TICK, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = None
        try:
            now = loop.time()
            for limit in [limit for limit in self._active if limit.at <= now]:
                self._active.discard(limit)
                limit.fire()
        finally:
            if self._active and self._loop is loop:
                self._sweeping = loop.call_later(TICK, self._sweep, loop)


class Limit:
    """One step's limit: its task, when it falls due, and whether it fired."""

    __slots__ = ("_cancelling", "_limits", "_seconds", "_task", "at", "fired")

    def __init__(self, limits: Limits, seconds: float) -> None:
        self._limits = limits
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.at = 0.0
        self.fired = False

    def __enter__(self) -> Limit:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a time limit must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.at = loop.time() + self._seconds
        self._limits._start(self, loop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._limits._active.discard(self)
        if self.fired:
            assert self._task is not None
            # Only when no one else asked the task to stop is the cancellation ours to end.
            cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
            if self._task.uncancel() <= self._cancelling and cancelled:
                raise TimeoutError from exc

    def fire(self) -> None:
        self.fired = True
        assert self._task is not None
        self._task.cancel()
