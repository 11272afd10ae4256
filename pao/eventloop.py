"""The event loop for pao's long-running processes: uvloop where it is installed.

uvloop (libuv, in C) schedules callbacks and tasks and reads sockets for a
fraction of asyncio's own cost. A draining worker starts, times and ends
thousands of runs a second, each an asyncio task, so its loop is a visible
share of its CPU. uvicorn picks uvloop by itself for the API. On a platform
without uvloop (Windows) the standard loop runs the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when available."""
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)
