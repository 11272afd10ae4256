"""The database's clock, read on the host: measured on a connection, carried on by the
monotonic clock, measured again only when stale; and the worker's wait for due work."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from pao.clock import DatabaseClock
from pao.db import connect
from pao.store import clock as clock_store
from pao.store import work
from tests.helpers import SEED_TASK, auth, queue_runs


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


def test_the_clock_is_the_servers_and_measured_again_only_when_stale(db_url: str) -> None:
    async def go() -> None:
        conn = await connect(db_url, autocommit=True)
        try:
            ticks = Ticks()
            clock = DatabaseClock(refresh_seconds=5.0, monotonic=ticks)
            assert clock.stale()
            first = await clock.now(conn)
            server = await clock_store.read(conn)
            # Measured within the round trips just made (the monotonic clock stood still).
            assert timedelta(0) <= server - first < timedelta(seconds=1)

            # Carried on by the monotonic clock, exactly, without asking the server.
            ticks.at += 3.0
            assert not clock.stale()
            assert await clock.now(conn) == first + timedelta(seconds=3)
            assert clock() == first + timedelta(seconds=3)

            # Stale: measured again. The server's clock moved by milliseconds, not the
            # six seconds the monotonic clock claims, so the fresh reading shows it.
            ticks.at += 3.0
            assert clock.stale()
            again = await clock.now(conn)
            assert again < first + timedelta(seconds=1)
            assert again >= server
        finally:
            await conn.close()

    asyncio.run(go())


def test_before_any_measure_the_clock_is_the_hosts() -> None:
    clock = DatabaseClock()
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=1)


def test_the_wait_for_due_work_is_counted_by_the_databases_clock(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """`next_due` answers in seconds from the server's clock, so a worker whose own clock is
    off neither spins (ahead) nor starts late (behind)."""
    resp = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token))
    assert resp.status_code == 201, resp.text
    queue_runs(db, resp.json()["id"], 1)
    db.execute("UPDATE due_work SET run_after = clock_timestamp() + interval '90 seconds'")

    async def seconds() -> float | None:
        conn = await connect(db_url, autocommit=True)
        try:
            return await work.next_due(conn)
        finally:
            await conn.close()

    left = asyncio.run(seconds())
    assert left is not None
    assert 85 < left <= 90
    db.execute("UPDATE due_work SET run_after = clock_timestamp() - interval '2 seconds'")
    overdue = asyncio.run(seconds())
    assert overdue is not None
    assert overdue <= -2
