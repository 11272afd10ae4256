"""Waking long-polling claimers, and keeping this process's task types fresh.

Both ride on the API's one listening connection (`StreamHub.hook`): `pao_remote_work`
says a step of a type was offered (its payload is the type's name) and wakes this
process's claimers of that type, each of which then tries one claim on a pooled
connection; `pao_task_types` says a type changed, and the registry loads the types again
before its next check. A waiting claimer holds no database connection. When the listener
(re)starts, every waiter is woken (a notification may have been missed). Without a
listener (behind a transaction pooler with no direct URL) a waiter tries again every
`POLL_SECONDS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from api import metrics
from api.streams import StreamHub
from pao.store.remote_steps import OFFERED_CHANNEL
from pao.store.task_types import CHANGED_CHANNEL
from pao.tools import ToolRegistry

POLL_SECONDS = 1.0
TICK_SECONDS = 1.0
"""A waiter looks this often whether the server is shutting down (no database read)."""


class RemoteWork:
    def __init__(self, hub: StreamHub, registry: ToolRegistry) -> None:
        self.hub = hub
        self.registry = registry
        self._waiters: dict[str, set[asyncio.Event]] = {}
        hub.hook(OFFERED_CHANNEL, self._offered)
        hub.hook(CHANGED_CHANNEL, self._types_changed)

    @property
    def notified(self) -> bool:
        """Whether offers wake waiters (else they poll)."""
        return self.hub.url is not None

    @property
    def stopping(self) -> bool:
        return self.hub.stopping

    def start(self) -> None:
        self.hub.start()

    def _offered(self, task_type: str | None) -> None:
        if task_type is None:
            for waiters in self._waiters.values():
                for event in waiters:
                    event.set()
            return
        for event in self._waiters.get(task_type, ()):
            event.set()

    def _types_changed(self, name: str | None) -> None:
        self.registry.forget_remote()

    @contextmanager
    def waiting(self, task_type: str) -> Iterator[asyncio.Event]:
        """An event set when a step of `task_type` may have been offered; register it
        before looking for work, so an offer made meanwhile is not missed."""
        event = asyncio.Event()
        self._waiters.setdefault(task_type, set()).add(event)
        metrics.CLAIMS_WAITING.inc()
        try:
            yield event
        finally:
            metrics.CLAIMS_WAITING.dec()
            waiters = self._waiters.get(task_type)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_type]

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Until `event` is set, `seconds` pass or the server begins to shut down."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while not event.is_set() and not self.stopping:
            left = until - loop.time()
            if left <= 0:
                return
            try:
                async with asyncio.timeout(min(left, TICK_SECONDS)):
                    await event.wait()
            except TimeoutError:
                continue
