"""The statement lane: autocommit connections reused without a pool checkout, healed as the
pool heals its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from pao.db import Conn, StatementLane, make_pool
from pao.errors import DatabaseUnavailable
from tests.helpers import until_async

T = TypeVar("T")


def _with_lane(
    db_url: str,
    body: Callable[[AsyncConnectionPool[Conn], StatementLane], Awaitable[T]],
    *,
    size: int = 2,
    trust_recent: float = 60.0,
) -> T:
    async def go() -> T:
        pool = make_pool(db_url, min_size=1, max_size=4)
        await pool.open(wait=True)
        lane = StatementLane(pool, size=size, trust_recent=trust_recent)
        try:
            return await body(pool, lane)
        finally:
            await lane.close()
            await pool.close()

    return asyncio.run(go())


async def _running(db_url: str, query: str) -> bool:
    """Whether some session is running the query right now."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = %s", (query,)
        )
        return await cur.fetchone() is not None


async def _backend(lane: StatementLane) -> int:
    async with lane.connection() as conn:
        assert conn.autocommit
        row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
        assert row is not None
        return int(row["pid"])


def test_a_connection_is_reused_without_asking_the_pool_again(db_url: str) -> None:
    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> tuple[int, ...]:
        first = await _backend(lane)
        asked = pool.get_stats()["requests_num"]
        second = await _backend(lane)
        return first, second, asked, pool.get_stats().get("requests_num", 0)

    first, second, asked, asked_after = _with_lane(db_url, body)
    assert first == second
    assert asked_after == asked


def test_a_connection_killed_while_idle_is_replaced_after_the_ping(db_url: str) -> None:
    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> tuple[int, int]:
        first = await _backend(lane)
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s, 10000)", (first,))  # gone on return
        return first, await _backend(lane)  # idle "too long" (trust_recent 0): pinged first

    first, second = _with_lane(db_url, body, trust_recent=0.0)
    assert second != first


def test_a_connection_keeps_its_cursor_and_a_replaced_one_gets_a_new_cursor(db_url: str) -> None:
    """The lane's cursor is kept with its connection, so a statement run again reuses it;
    once that connection dies and is replaced, the new one has a working cursor of its own."""

    async def run(lane: StatementLane) -> tuple[psycopg.AsyncCursor[Any], int]:
        async with lane.cursor() as cur:
            row = await (await cur.execute("SELECT pg_backend_pid() AS pid")).fetchone()
            assert row is not None
            return cur, int(row["pid"])

    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> list[Any]:
        first, first_pid = await run(lane)
        again, again_pid = await run(lane)
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s, 10000)", (first_pid,))  # gone on return
        replaced, replaced_pid = await run(lane)  # idle "too long" (trust_recent 0): pinged
        return [first is again, again_pid == first_pid, replaced is first, replaced_pid]

    same_cursor, same_backend, reused_dead, new_pid = _with_lane(db_url, body, trust_recent=0.0)
    assert same_cursor
    assert same_backend
    assert not reused_dead
    assert new_pid > 0


def test_a_connection_killed_while_trusted_fails_once_then_heals(db_url: str) -> None:
    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> tuple[int, int, str]:
        first = await _backend(lane)
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s, 10000)", (first,))  # gone on return
        failure = ""
        try:
            await _backend(lane)  # trusted, not pinged: this request meets the outage
        except DatabaseUnavailable as exc:
            failure = type(exc).__name__
        return first, await _backend(lane), failure

    first, second, failure = _with_lane(db_url, body)
    assert failure == "DatabaseUnavailable"
    assert second != first


def test_a_connection_left_in_a_transaction_goes_back_to_the_pool(db_url: str) -> None:
    async def body(
        pool: AsyncConnectionPool[Conn], lane: StatementLane
    ) -> tuple[int, int, tuple[Any, bool]]:
        async with lane.connection() as conn:
            first = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        kept = lane.idle
        async with pool.connection() as conn:  # the pool's only connection: that one, rolled back
            autocommit = conn.autocommit
            after = await (
                await conn.execute(
                    "SELECT pg_backend_pid() AS pid, to_regclass('left_open') IS NULL AS gone"
                )
            ).fetchone()
        assert first is not None
        assert after is not None
        return kept, int(first["pid"]) - int(after["pid"]), (after["gone"], autocommit)

    kept, pid_difference, (gone, autocommit) = _with_lane(db_url, body)
    assert kept == 0
    assert pid_difference == 0
    assert gone is True
    assert autocommit is False  # a transaction taken from the pool is a transaction again


def test_no_more_than_size_stay_idle_and_the_rest_go_back_out_of_autocommit(db_url: str) -> None:
    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> tuple[int, set[bool]]:
        both = asyncio.Barrier(2)

        async def hold() -> None:
            async with lane.connection() as conn:
                await conn.execute("SELECT 1")
                await both.wait()  # two connections out of the lane at once

        await asyncio.gather(hold(), hold())
        modes = set()
        for _ in range(3):
            async with pool.connection() as conn:  # what the pool hands out
                modes.add(conn.autocommit)
        return lane.idle, modes

    idle, modes = _with_lane(db_url, body, size=1)
    assert idle == 1
    assert modes == {False}


def test_close_hands_every_idle_connection_back(db_url: str) -> None:
    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> tuple[int, int, int]:
        await _backend(lane)
        before = pool.get_stats()["pool_available"]
        await lane.close()
        return lane.idle, before, pool.get_stats()["pool_available"]

    idle, before, after = _with_lane(db_url, body)
    assert idle == 0
    assert after == before + 1


def test_a_statement_cancelled_midway_leaves_the_lane_usable(db_url: str) -> None:
    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> tuple[int, int]:
        async def slow() -> None:
            async with lane.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")

        waiting = asyncio.create_task(slow())
        await until_async(lambda: _running(db_url, "SELECT pg_sleep(5)"), "the slow statement")
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        after = await _backend(lane)  # the cancelled statement's connection is not in the way
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            return after, int(conn.autocommit)

    after, autocommit = _with_lane(db_url, body)
    assert after > 0
    assert autocommit == 0


def test_prepared_statements_gone_stale_cost_one_retryable_failure_per_connection(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    """After a migration changes a table under a prepared `SELECT *`, the pool's, the
    autocommit statement's and the lane's connections each fail once, retryably, and are
    replaced; nothing else is refused."""
    from pao import db as pao_db

    query = "SELECT * FROM agents LIMIT 1"

    async def body(pool: AsyncConnectionPool[Conn], lane: StatementLane) -> list[str]:
        async def via_pool() -> None:
            async with pao_db.connection(pool) as conn:
                await (await conn.execute(query)).fetchall()

        async def via_statement() -> None:
            async with pao_db.statement(pool) as conn:
                await (await conn.execute(query)).fetchall()

        async def via_lane() -> None:
            async with lane.connection() as conn:
                await (await conn.execute(query)).fetchall()

        outcomes: list[str] = []
        for _ in range(8):  # prepared on every connection by now
            for run in (via_pool, via_statement, via_lane):
                await run()
        db.execute("ALTER TABLE agents ADD COLUMN added_later int")
        for _ in range(4):
            for run in (via_pool, via_statement, via_lane):
                try:
                    await run()
                    outcomes.append("ok")
                except DatabaseUnavailable:
                    outcomes.append("retry")
        return outcomes

    outcomes = _with_lane(db_url, body, size=1)
    assert 1 <= outcomes.count("retry") <= 3, outcomes
    assert outcomes[-6:] == ["ok"] * 6, outcomes
