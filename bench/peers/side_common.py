"""Shared by the side scripts (the peers' run under .bench-venv's Python, without pao).

Every peer is driven the same way: `setup`, `enqueue` (one by one or in batches,
timed here), `fill` (one batch, prints when it committed), `worker` (until
SIGTERM) and `pickup` (one job at a time; the job's own code records when it
began in `bench_started`, and this side polls for it exactly as the harness
polls pao's runs).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import psycopg

START_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_started (key text PRIMARY KEY, at double precision NOT NULL)"
)
POLL_SECONDS = 0.001
GAP_SECONDS = 0.02


class StartMarks:
    """Called first thing in a job: notes the time, then stores it on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.AsyncConnection | None = None

    async def mark(self, key: str) -> None:
        at = time.time()
        if self.conn is None:
            self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await self.conn.execute("INSERT INTO bench_started VALUES (%s, %s)", (key, at))


async def create_start_table(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(START_TABLE)


async def timed_enqueue(
    count: int,
    batch: int,
    one: Callable[[], Awaitable[object]],
    many: Callable[[int], Awaitable[object]],
) -> float:
    """Seconds to enqueue `count` jobs, one call each or `batch` per call."""
    start = time.perf_counter()
    if batch <= 1:
        for _ in range(count):
            await one()
    else:
        for done in range(0, count, batch):
            await many(min(batch, count - done))
    return time.perf_counter() - start


# A peer's job notes when its code began in bench_started, under the key it was given.
MARKED_SQL = "SELECT at FROM bench_started WHERE key = %s"


async def pickup(
    url: str,
    count: int,
    enqueue: Callable[[str], Awaitable[object]],
    started_sql: str = MARKED_SQL,
) -> list[float]:
    """Milliseconds from just before each enqueue to the job's first line of code.

    `enqueue(key)` queues one job and returns what `started_sql` finds it by; the query
    answers when the job began (seconds since the epoch), once it has. Every system's
    pickup is measured by this one loop.
    """
    latencies = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(count):
            key = uuid.uuid4().hex
            sent = time.time()
            job = await enqueue(key)
            while True:
                cur = await conn.execute(started_sql, (job,))
                row = await cur.fetchone()
                if row is not None:
                    latencies.append((row[0] - sent) * 1000)
                    break
                await asyncio.sleep(POLL_SECONDS)
            await asyncio.sleep(GAP_SECONDS)
    return latencies


def emit(**figures: object) -> None:
    print(json.dumps(figures), flush=True)
