"""Time from one place: the database's clock, read on any host.

Processes on different machines do not share a clock, and a host whose clock is two
minutes ahead or behind must still fire every occurrence on time, judge lateness and
budgets' windows, and stamp what it writes by the same time as every other process and
as the database's own `now()` (which claims and leases go by). So every decision is taken
by the database's clock: `DatabaseClock` measures it on a connection the caller already
holds, then carries it forward on this host's monotonic clock (which no NTP step or
offset moves), measuring again once the last measure is a few seconds old. In the steady
state that is one extra round trip every few seconds per process, not one per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pao.db import Conn
from pao.store import clock as clock_store

# How old a measure may be before the next caller with a connection measures again. The
# monotonic clock drifts from the server's by parts per million: microseconds in this time.
REFRESH_SECONDS = 5.0

Clock = Callable[[], datetime]
"""Anything that says what time it is (tests drive fake ones)."""


class DatabaseClock:
    """The database server's time, as of the last measure, carried on by the monotonic clock.

    Read it with `now(conn)` where a connection is at hand (it measures when the last
    measure is stale) or call it where none is (the last measure, carried on; the host's
    clock only until the first measure).
    """

    def __init__(
        self,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._at: datetime | None = None  # the server's time at the last measure
        self._mark = 0.0  # the monotonic clock at that moment

    def __call__(self) -> datetime:
        if self._at is None:
            return datetime.now(UTC)
        return self._at + timedelta(seconds=self._monotonic() - self._mark)

    @property
    def measured(self) -> bool:
        return self._at is not None

    def stale(self) -> bool:
        """Whether the next caller with a connection should measure again."""
        return self._at is None or self._monotonic() - self._mark >= self.refresh_seconds

    async def sync(self, conn: Conn) -> None:
        """Measure the server's clock on `conn` if the last measure is stale.

        The server read its clock somewhere within the round trip; its midpoint is the
        best guess, off by at most half a round trip (well under a millisecond nearby).
        """
        if not self.stale():
            return
        sent = self._monotonic()
        at = await clock_store.read(conn)
        back = self._monotonic()
        self._at, self._mark = at, (sent + back) / 2

    async def now(self, conn: Conn) -> datetime:
        """The database's time now, measured on `conn` if the last measure is stale."""
        await self.sync(conn)
        return self()
