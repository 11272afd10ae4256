"""Running a worker or scheduler on a thread of its own while a test drives the API."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pao import db
from pao.settings import Settings
from scheduler.service import Scheduler
from worker.service import Worker


class Background:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.force: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def signal(self, *, force: bool = False) -> None:
        assert self.loop is not None
        event = self.force if force else self.stop
        assert event is not None
        self.loop.call_soon_threadsafe(event.set)


@contextmanager
def in_background(
    body: Callable[[Background], Awaitable[None]], *, timeout: float = 30
) -> Iterator[Background]:
    bg = Background()

    def main() -> None:
        async def go() -> None:
            bg.loop = asyncio.get_running_loop()
            bg.stop, bg.force = asyncio.Event(), asyncio.Event()
            bg.ready.set()
            await body(bg)

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced to the test below
            bg.error = exc
            bg.ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    bg.ready.wait(timeout)
    try:
        yield bg
    finally:
        if bg.loop is not None and not bg.loop.is_closed():
            bg.signal()
        thread.join(timeout)
        assert not thread.is_alive(), "the background service did not stop"
        if bg.error is not None:
            raise bg.error


@contextmanager
def worker(db_url: str, **settings: Any) -> Iterator[Background]:
    """A worker serving `db_url` until the block ends (SIGTERM-like drain)."""

    async def body(bg: Background) -> None:
        # Plans made once, as worker/main.py has them.
        pool = db.make_pool(db_url, min_size=1, max_size=8, plan_once=True)
        await pool.open(wait=True)
        try:
            assert bg.stop is not None
            assert bg.force is not None
            await Worker(Settings(**settings), pool, db_url).serve(bg.stop, bg.force)
        finally:
            await pool.close()

    with in_background(body) as bg:
        yield bg


@contextmanager
def scheduler(db_url: str, **settings: Any) -> Iterator[Background]:
    async def body(bg: Background) -> None:
        pool = db.make_pool(db_url, min_size=1, max_size=4)
        await pool.open(wait=True)
        try:
            assert bg.stop is not None
            await Scheduler(Settings(**settings), pool).serve(bg.stop)
        finally:
            await pool.close()

    with in_background(body) as bg:
        yield bg
