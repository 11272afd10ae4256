"""The one door to PostgreSQL: the pool, and psycopg errors turned into ours."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import psycopg
import psycopg.errors
from psycopg.rows import BaseRowFactory, RowMaker, dict_row
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool

from pao.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from pao.settings import Settings

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]
Cursor = psycopg.AsyncCursor[Any]
T = TypeVar("T")


def dump_json(value: Any) -> bytes | str:
    """JSON for every json/jsonb parameter: orjson where it can, the standard library where
    orjson refuses (integers beyond 64 bits, keys that are not strings, lone surrogates).

    The worker sends each batch of run ends as one JSON document; json.dumps was about 6 %
    of its time at full drain, orjson a tenth of that.
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value)


set_json_dumps(dump_json)

# SQLSTATE classes that mean "the server is not there right now", not "your query is wrong".
_UNAVAILABLE_PREFIXES = ("08", "57P", "53")


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the database is down, restarting or unreachable, or that the
    server reached is no longer the primary (see `is_read_only`)."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        sqlstate = getattr(exc, "sqlstate", None)
        return sqlstate is None or sqlstate.startswith(_UNAVAILABLE_PREFIXES)
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return True
    if is_read_only(exc):
        return True
    from psycopg_pool import PoolTimeout

    return isinstance(exc, PoolTimeout)


# Raised by a statement that failed this time but may well work on the next try: a timeout,
# a lock not granted, a query cancelled, an internal error, a prepared statement mixed up
# by a pooler. Not a bug in the statement; worth a retry after a pause, and a 503.
_PREPARED_MIX_UPS = ("26000", "42P05")


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is a database error a later retry may not meet (see above)."""
    if is_unavailable(exc):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InternalError):
        return True
    return isinstance(exc, psycopg.Error) and exc.sqlstate in _PREPARED_MIX_UPS


def advice(exc: BaseException) -> str:
    """What to do about a database error, for the log line that reports it."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc)
    if sqlstate in _PREPARED_MIX_UPS or "prepared statement" in text:
        return (
            "prepared statements are getting mixed up: DATABASE_URL looks like a "
            "transaction-mode pooler (PgBouncer); set PAO_DATABASE_POOLER=transaction "
            "(docs/pgbouncer.md)"
        )
    return "retrying with a pause; if it persists, check the database's log"


@contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Turn "database is unavailable" psycopg errors into `DatabaseUnavailable`."""
    try:
        yield
    except Exception as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable() from exc
        raise


def is_read_only(exc: BaseException) -> bool:
    """The server refuses writes (SQLSTATE 25006): it is a standby, or a primary fenced
    read-only (`default_transaction_read_only`) in a failover. pao opens no read-only
    transaction of its own, so this is never the statement's fault; the connection will
    not write again, and a new one (`target_session_attrs=read-write`) finds the primary."""
    return isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)


def is_stale_plan(exc: BaseException) -> bool:
    """A prepared statement whose result columns changed under it (a migration added or
    dropped a column of a table it reads with `*`). PostgreSQL keeps refusing it on that
    connection for as long as the connection lives."""
    if not isinstance(exc, psycopg.errors.FeatureNotSupported):
        return False
    # Known by the server function that raises it, which a translated message leaves as is.
    return exc.diag.source_function == "RevalidateCachedQuery" or "cached plan" in str(exc)


@asynccontextmanager
async def fresh_connection(conn: Conn) -> AsyncIterator[Conn]:
    """Close a connection that cannot serve any more, and report a retryable outage: one
    whose prepared statements went stale, or one to a server that now refuses writes.

    Its pool (or lane) replaces a closed connection with a new one, which prepares every
    statement afresh and, with a multi-host `target_session_attrs=read-write` URL, reaches
    whichever server is the primary now: a rolling deploy's migration, or a failover that
    fences the old primary read-only, costs one retryable failure per connection, not a
    broken statement until the process restarts (the pool's checks pass on such a
    connection: it still answers).
    """
    try:
        yield conn
    except psycopg.errors.FeatureNotSupported as exc:
        if not is_stale_plan(exc):
            raise
        log.warning("the schema changed under prepared statements; reconnecting: %s", exc)
        await conn.close()
        raise DatabaseUnavailable() from exc
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        log.warning(
            "the server refuses writes (a standby, or a primary fenced in a failover); "
            "reconnecting to find the primary (DATABASE_URL should list every server, with "
            "target_session_attrs=read-write): %s",
            exc,
        )
        await conn.close()
        raise DatabaseUnavailable() from exc


# Session-level, yet safe behind a transaction-mode pooler: PgBouncer tracks TimeZone (as it
# does client_encoding, DateStyle, standard_conforming_strings and application_name) and sets
# it again on whichever server connection serves this client's next transaction.
async def _configure(conn: Conn) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.commit()


async def _configure_generic(conn: Conn) -> None:
    """As _configure, and prepared statements keep the plan made once for them.

    The worker's claim reaches each run by its id through a parameterised probe of its
    month's partition, which a plan made once does as well as any (version_0021.sql).
    Left to choose, PostgreSQL re-plans it for every claim, because a plan made for one
    batch size looks cheaper, and each of those plans weighs every partition of `runs`:
    a claim of 10 took 1.6 ms where the plan made once takes 0.8, and more as months of
    history are kept. tests/integration/test_claim_plan.py holds the worker's statements
    to plans made once that read indexes.
    """
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await _configure(conn)


def pooled(settings: Settings) -> bool:
    """True when DATABASE_URL goes through a transaction-mode pooler (PAO_DATABASE_POOLER).

    Such a pooler hands each transaction whichever server connection is free, so nothing
    may outlive a transaction on it: no server-side prepared statements, no LISTEN, no
    session advisory lock, no session-level SET but the parameters the pooler tracks
    (TimeZone is one of them).
    """
    return settings.database_pooler == "transaction"


def listen_url(settings: Settings, url: str) -> str | None:
    """Where to LISTEN: PAO_LISTEN_DATABASE_URL, else DATABASE_URL unless it is a pooler.

    None means nowhere: notifications would not reach this process, which then polls.
    """
    if settings.listen_database_url:
        return settings.listen_database_url
    return None if pooled(settings) else url


def warn_if_polling(settings: Settings, process: str) -> None:
    """Say once, at start, that this process polls instead of listening, and how to fix it."""
    if pooled(settings) and not settings.listen_database_url:
        log.warning(
            "%s: DATABASE_URL is a transaction-mode pooler and PAO_LISTEN_DATABASE_URL is "
            "not set, so notifications cannot reach this process: it polls instead "
            "(new work waits up to a poll interval, live streams up to a heartbeat). Set "
            "PAO_LISTEN_DATABASE_URL to a direct URL to the database (docs/pgbouncer.md)",
            process,
        )


async def listen_connection(url: str) -> Conn:
    """A connection of its own for LISTEN, in autocommit (never through a pooler)."""
    conn: Conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return conn


def make_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "pao",
    trust_recent: float = 0.0,
    prepare: bool = True,
    plan_once: bool = False,
) -> AsyncConnectionPool[Conn]:
    """A pool that checks connections before use, so a database restart heals by itself.

    The check costs a round trip. With `trust_recent`, a connection that came
    back to the pool less than that many seconds ago is not pinged: a hot loop
    saves the round trip, and its rare failure after a restart is retried by
    the caller like any other outage. `prepare=False` (behind a transaction-mode
    pooler) never prepares statements on the server: a prepared statement lives on
    one server connection, and the pooler sends the next transaction elsewhere.
    `plan_once` (the worker's, when it prepares) keeps each prepared statement's first
    plan (_configure_generic).
    """
    kwargs: dict[str, Any] = {"autocommit": False, "row_factory": dict_row}
    if not prepare:
        kwargs["prepare_threshold"] = None
    returned: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    async def note_return(conn: Conn) -> None:
        returned[conn] = time.monotonic()

    async def check(conn: Conn) -> None:
        recent = time.monotonic() - returned.get(conn, -math.inf) < trust_recent
        if not (recent and not conn.broken):
            await AsyncConnectionPool.check_connection(conn)

    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        timeout=3.0,
        kwargs=kwargs,
        configure=_configure_generic if plan_once and prepare else _configure,
        check=check,
        reset=note_return if trust_recent else None,
        reconnect_timeout=3600.0,
    )


@asynccontextmanager
async def connection(pool: AsyncConnectionPool[Conn]) -> AsyncIterator[Conn]:
    """A pooled connection inside one transaction, with unavailability translated."""
    with wrap_exceptions():
        async with pool.connection() as conn, fresh_connection(conn):
            yield conn


@asynccontextmanager
async def statement(pool: AsyncConnectionPool[Conn]) -> AsyncIterator[Conn]:
    """A pooled connection in autocommit: for one statement that is atomic by itself, or a
    pipeline that sends its own BEGIN with its first statement (the worker's claim and ends).
    """
    with wrap_exceptions():
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                async with fresh_connection(conn):
                    yield conn
            finally:
                if not conn.closed:
                    await conn.set_autocommit(False)


@asynccontextmanager
async def pipelined_transaction(conn: Conn) -> AsyncIterator[None]:
    """A transaction sent as one pipeline on an autocommit connection (from `statement`).

    BEGIN travels with the first statement and COMMIT with the last ones: statements whose
    results are read inside the block cost a round trip there, the rest share the final
    one. Leaving the block waited for every result. On error the transaction is rolled back.
    """
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            yield
            await conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
        raise


class StatementLane:
    """Autocommit connections kept on a plain list for one-statement work, in front of a pool.

    Checking a connection out of psycopg_pool and back costs more CPU than a
    short statement itself (a lock, a timeout, the check, the reset and two
    autocommit switches): for an API request, which signs in with one
    statement and often reads with one more, that was the largest cost. The
    lane borrows connections from `pool` as needed and keeps up to `size` of
    them idle in autocommit; a broken one, or one left in a transaction (a
    cancelled statement), goes back to the pool, which replaces it. A
    connection idle for `trust_recent` seconds or more is pinged first, as
    the pool would, so a database restart heals the same way.
    """

    def __init__(
        self, pool: AsyncConnectionPool[Conn], *, size: int, trust_recent: float = 1.0
    ) -> None:
        self.pool = pool
        self.size = size
        self.trust_recent = trust_recent
        self._idle: list[tuple[Conn, float]] = []
        self._cursors: dict[Conn, Cursor] = {}
        self._closed = False

    @property
    def idle(self) -> int:
        """How many connections wait on the lane."""
        return len(self._idle)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A connection in autocommit, for one statement that is atomic by itself."""
        with wrap_exceptions():
            conn = await self._take()
            try:
                async with fresh_connection(conn):
                    yield conn
            finally:
                await self._give_back(conn)

    @asynccontextmanager
    async def cursor(self) -> AsyncIterator[Cursor]:
        """A lane connection's own cursor, kept with it, for a statement run over and over.

        Run again on the same cursor, a statement reuses the cursor's result loaders; a
        fresh cursor builds one for every column each time (the sign-in returns some forty).
        """
        async with self.connection() as conn:
            cur = self._cursors.get(conn)
            if cur is None:
                cur = self._cursors[conn] = conn.cursor()
            yield cur

    async def _take(self) -> Conn:
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < self.trust_recent and not conn.broken:
                return conn
            try:
                await AsyncConnectionPool.check_connection(conn)
            except Exception:
                self._cursors.pop(conn, None)
                await self.pool.putconn(conn)  # the pool discards it
                continue
            return conn
        conn = await self.pool.getconn()
        try:
            await conn.set_autocommit(True)
        except BaseException:
            await self.pool.putconn(conn)
            raise
        return conn

    async def _give_back(self, conn: Conn) -> None:
        status = conn.info.transaction_status
        idle = status == psycopg.pq.TransactionStatus.IDLE
        if idle and not conn.broken and not self._closed and len(self._idle) < self.size:
            self._idle.append((conn, time.monotonic()))
            return
        self._cursors.pop(conn, None)
        # Back to the pool as its other users expect it: out of autocommit, no transaction
        # open. A connection cancelled mid-statement, or that cannot be set right, is closed;
        # the pool replaces it.
        try:
            if conn.closed:
                pass
            elif status == psycopg.pq.TransactionStatus.ACTIVE or conn.broken:
                await conn.close()
            else:
                if not idle:
                    await conn.rollback()
                await conn.set_autocommit(False)
        except psycopg.Error:
            await conn.close()
        await self.pool.putconn(conn)

    async def close(self) -> None:
        """Hand every idle connection back to the pool (before it closes)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await self._give_back(conn)


async def connect(url: str, *, autocommit: bool = False, prepare: bool = True) -> Conn:
    """A single connection outside any pool (CLI commands, migrations); `prepare=False`
    behind a transaction-mode pooler, as for `make_pool`."""
    with wrap_exceptions():
        conn: Conn = await psycopg.AsyncConnection.connect(
            url,
            autocommit=autocommit,
            row_factory=dict_row,
            prepare_threshold=5 if prepare else None,
        )
        await conn.execute("SET TIME ZONE 'UTC'")
        if not autocommit:
            await conn.commit()
        return conn


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def field_names(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def from_row(cls: type[T], row: Mapping[str, Any], prefix: str = "") -> T:
    """Dataclass `cls` from a dict row's columns named `prefix` + field, as `model_row` does
    (others ignored): for a row that carries more than one record, or more than a record."""
    return cls(**{n: row[prefix + n] for n in field_names(cls) if prefix + n in row})


def model_row(cls: type[T]) -> BaseRowFactory[T]:
    """Rows into dataclass `cls`, ignoring columns it does not name.

    Unlike `class_row`, a column added by a later migration does not break
    code that predates it (rolling deploys run old and new code side by side).
    """
    names = set(field_names(cls))

    def factory(cursor: Any) -> RowMaker[T]:
        description = cursor.description or []
        keep = [(i, col.name) for i, col in enumerate(description) if col.name in names]

        def make(values: Sequence[Any]) -> T:
            return cls(**{name: values[i] for i, name in keep})

        return make

    return factory
