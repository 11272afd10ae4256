"""Step time limits sharing one timer behave as asyncio.timeout does."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from pao.settings import Settings
from worker.limits import RUN_MAX_BYTES, TICK, Limit, Limits


def test_a_body_past_its_limit_is_stopped_with_timeout_error() -> None:
    async def go() -> float:
        limits = Limits()
        started = time.monotonic()
        with pytest.raises(TimeoutError), limits.within(0.05):
            await asyncio.sleep(10)
        took = time.monotonic() - started
        # The task is not left cancelled: it goes on awaiting.
        await asyncio.sleep(0)
        return took

    took = asyncio.run(go())
    assert 0.05 <= took < 0.05 + TICK + 0.5


def test_a_body_within_its_limit_is_left_alone_and_the_timer_stops() -> None:
    async def go() -> None:
        limits = Limits()
        with limits.within(0.05):
            await asyncio.sleep(0)
        # Past the limit the task is not cancelled after the fact.
        await asyncio.sleep(0.05 + 3 * TICK)
        assert limits._sweeping is None
        assert not limits._active

    asyncio.run(go())


def test_many_limits_each_fire_on_time() -> None:
    """Steps with different limits on one timer: each is stopped at its own, no other."""

    async def step(limits: Limits, seconds: float, lasts: float) -> str:
        try:
            with limits.within(seconds):
                await asyncio.sleep(lasts)
        except TimeoutError:
            return "timed out"
        return "done"

    async def go() -> list[str]:
        limits = Limits()
        return list(
            await asyncio.gather(
                step(limits, 0.05, 1),
                step(limits, 1, 0.1),
                step(limits, 0.2, 1),
                step(limits, 0.3, 0.01),
            )
        )

    assert asyncio.run(go()) == ["timed out", "done", "timed out", "done"]


def test_a_cancel_from_elsewhere_as_the_limit_fires_stays_a_cancel() -> None:
    """Stopped by its limit and by someone else at once, the task is cancelled, not timed
    out: the other cancel must not be swallowed."""

    async def go() -> None:
        limits = Limits()
        entered: asyncio.Future[Limit] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            with limits.within(10) as limit:
                entered.set_result(limit)
                await asyncio.sleep(10)

        task = asyncio.create_task(body())
        limit = await entered
        limit.fire()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        entered = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(body())
        limit = await entered
        limit.fire()  # alone: a timeout
        with pytest.raises(TimeoutError):
            await task

    asyncio.run(go())


def test_a_cancel_while_the_body_runs_within_its_limit_is_a_cancel() -> None:
    async def go() -> None:
        limits = Limits()

        async def body() -> None:
            with limits.within(10):
                await asyncio.sleep(10)

        task = asyncio.create_task(body())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not limits._active

    asyncio.run(go())


def test_nested_limits_each_answer_for_their_own() -> None:
    """The inner, shorter limit fires inside the outer one, which goes on; the outer one
    fires around an inner one that was still in time."""

    async def go() -> list[str]:
        limits = Limits()
        seen = []
        with limits.within(5):
            try:
                with limits.within(0.05):
                    await asyncio.sleep(10)
            except TimeoutError:
                seen.append("inner timed out")
            await asyncio.sleep(0)
            seen.append("outer went on")
        try:
            with limits.within(0.05), limits.within(5):
                await asyncio.sleep(10)
        except TimeoutError:
            seen.append("outer timed out")
        return seen

    assert asyncio.run(go()) == ["inner timed out", "outer went on", "outer timed out"]


def test_a_body_that_swallows_the_cancel_ends_normally() -> None:
    """As with asyncio.timeout: no TimeoutError, and the task is not left cancelling."""

    async def go() -> tuple[str, int]:
        limits = Limits()
        with limits.within(0.05), contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        task = asyncio.current_task()
        assert task is not None
        return "ended", task.cancelling()

    assert asyncio.run(go()) == ("ended", 0)


def test_limits_keep_firing_on_a_second_event_loop() -> None:
    """A Limits that outlived its loop (its timer gone with it) arms a timer on the next."""
    limits = Limits()

    async def busy() -> None:
        with limits.within(10):
            await asyncio.sleep(0.001)

    async def times_out() -> bool:
        try:
            with limits.within(0.05):
                await asyncio.sleep(10)
        except TimeoutError:
            return True
        return False

    asyncio.run(busy())  # the loop closes with the sweep's timer armed on it
    assert asyncio.run(times_out())


def test_size_limits_come_from_the_settings_and_a_run_holds_four_outputs() -> None:
    default = Limits()
    assert default.step_input_max_bytes == Settings().step_input_max_bytes
    assert default.run_max_bytes == 4 * Settings().step_output_max_bytes
    env = {"PAO_STEP_INPUT_MAX_BYTES": "2048", "PAO_STEP_OUTPUT_MAX_BYTES": "4096"}
    limits = Limits.of(Settings.from_env(env))
    assert (limits.step_input_max_bytes, limits.step_output_max_bytes) == (2048, 4096)
    assert limits.run_max_bytes == 16384
    huge = Limits(step_output_max_bytes=1 << 30)
    assert huge.run_max_bytes == RUN_MAX_BYTES  # one jsonb value holds a run's steps
