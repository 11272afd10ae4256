"""A server that refuses writes (a standby, or a primary fenced read-only in a failover):
each pooled connection to it fails once, retryably, and is replaced; the replacement, on a
multi-host `target_session_attrs=read-write` URL, reaches the primary of the moment.

Without that, the pool's checks pass on such a connection (it still answers), and every
write fails until the process restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pao import db as pao_db
from pao.db import Conn, StatementLane, is_read_only, is_transient, is_unavailable, make_pool
from pao.errors import DatabaseUnavailable
from pao.migrate import migrate
from tests import pgpair

WRITE = "INSERT INTO pao_failover_probe DEFAULT VALUES RETURNING inet_server_port() AS port"


def test_read_only_refusals_are_an_outage_not_a_bug() -> None:
    refused = psycopg.errors.ReadOnlySqlTransaction(
        "cannot execute INSERT in a read-only transaction"
    )
    assert is_read_only(refused)
    assert is_unavailable(refused)
    assert is_transient(refused)
    assert not is_read_only(psycopg.errors.UniqueViolation("duplicate key"))


def _paths(
    pool: AsyncConnectionPool[Conn], lane: StatementLane
) -> dict[str, Callable[[str], Awaitable[None]]]:
    """One statement through each way pao reaches a pooled connection."""

    async def via_pool(sql: str) -> None:
        async with pao_db.connection(pool) as conn:
            await conn.execute(sql)

    async def via_statement(sql: str) -> None:
        async with pao_db.statement(pool) as conn:
            await conn.execute(sql)

    async def via_lane(sql: str) -> None:
        async with lane.connection() as conn:
            await conn.execute(sql)

    return {"pool": via_pool, "statement": via_statement, "lane": via_lane}


def test_a_connection_that_turned_read_only_fails_once_and_is_replaced(db_url: str) -> None:
    """Each way in: its connection set read-only (as a fenced primary's sessions are) fails
    the next write with a retryable DatabaseUnavailable, and the write after that works."""

    async def go() -> dict[str, list[str]]:
        pool = make_pool(db_url, min_size=1, max_size=1)  # one connection: the same one again
        await pool.open(wait=True)
        lane = StatementLane(pool, size=1, trust_recent=60.0)
        outcomes: dict[str, list[str]] = {}
        try:
            async with pao_db.connection(pool) as conn:
                await conn.execute("CREATE TABLE pao_failover_probe (id serial PRIMARY KEY)")
            for name, run in _paths(pool, lane).items():
                await run("SET default_transaction_read_only = on")
                tried = outcomes[name] = []
                for _ in range(3):
                    try:
                        await run("INSERT INTO pao_failover_probe DEFAULT VALUES")
                        tried.append("ok")
                    except DatabaseUnavailable:
                        tried.append("retry")
        finally:
            await lane.close()
            await pool.close()
        return outcomes

    outcomes = asyncio.run(go())
    assert outcomes == {name: ["retry", "ok", "ok"] for name in ("pool", "statement", "lane")}


@pytest.fixture
def pair() -> Iterator[pgpair.Pair]:
    pgpair.require()
    with pgpair.pair() as made:
        yield made


def test_after_the_old_primary_is_fenced_and_the_standby_promoted_writes_reach_the_new_one(
    pair: pgpair.Pair,
) -> None:
    """The old primary stays up but refuses writes; the pool on the multi-host URL moves to
    the promoted standby by itself, each of its connections failing once at most."""
    asyncio.run(migrate(pair.url))

    async def go() -> tuple[list[int], list[str]]:
        pool = make_pool(pair.url, min_size=3, max_size=3)
        await pool.open(wait=True)
        lane = StatementLane(pool, size=1, trust_recent=60.0)
        paths = _paths(pool, lane)
        ports: list[int] = []
        outcomes: list[str] = []

        async def write() -> None:
            async with pao_db.connection(pool) as conn:
                row = await (await conn.execute(WRITE)).fetchone()
                assert row is not None
                ports.append(int(row["port"]))

        try:
            async with pao_db.connection(pool) as conn:
                await conn.execute("CREATE TABLE pao_failover_probe (id serial PRIMARY KEY)")
            for run in paths.values():  # every connection in use before the failover
                await run("SELECT 1")
            await write()
            pair.wait_replayed()
            with psycopg.connect(pair.primary.url, autocommit=True) as old:
                old.execute("ALTER SYSTEM SET default_transaction_read_only = on")
                old.execute("SELECT pg_reload_conf()")
            pair.standby.promote()
            for _ in range(8):
                for run in paths.values():
                    try:
                        await run("INSERT INTO pao_failover_probe DEFAULT VALUES")
                        outcomes.append("ok")
                    except DatabaseUnavailable:
                        outcomes.append("retry")
            await write()
        finally:
            await lane.close()
            await pool.close()
        return ports, outcomes

    ports, outcomes = asyncio.run(go())
    assert ports == [pair.primary.port, pair.standby.port]
    assert 1 <= outcomes.count("retry") <= 3, outcomes  # one per connection at most
    assert outcomes[-6:] == ["ok"] * 6, outcomes
    with psycopg.connect(pair.standby.url) as new:
        assert new.execute("SELECT count(*) FROM pao_failover_probe").fetchone() == (
            2 + outcomes.count("ok"),  # and the write before and the one after
        )
