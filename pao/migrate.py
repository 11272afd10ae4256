"""Applies `migrations/version_NNNN.sql` in order, each in its own transaction.

Each transaction first takes a transaction-level advisory lock, then reads
what is applied, so two pods starting at once apply each file exactly once; the
second waits, then finds nothing to do. Nothing outlives a transaction (no
session lock, no prepared statement), so migrations run through a
transaction-mode pooler (PgBouncer) as well as directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import LiteralString

from pao.db import Conn, connect, wrap_exceptions
from pao.errors import NotMigrated
from pao.sql import QUERIES

_FILE = re.compile(r"^version_(\d{4})\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: LiteralString


def available() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            sql: LiteralString = entry.read_text(encoding="utf-8")  # shipped with us, not input
            found.append(Migration(int(match.group(1)), entry.name, sql))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration numbering has a gap before {migration.name}")
    return found


async def applied_versions(conn: Conn) -> set[int]:
    cur = await conn.execute(QUERIES["migrations_table_exists"])
    row = await cur.fetchone()
    if not row or not row["exists"]:
        return set()
    cur = await conn.execute(QUERIES["migrations_applied"])
    return {r["version"] for r in await cur.fetchall()}


async def pending(conn: Conn) -> list[Migration]:
    done = await applied_versions(conn)
    return [m for m in available() if m.version not in done]


async def ensure_migrated(conn: Conn) -> None:
    """Raise `NotMigrated` unless every shipped migration is applied."""
    todo = await pending(conn)
    if conn.info.transaction_status != 0:
        await conn.rollback()
    if todo:
        names = ", ".join(m.name for m in todo)
        raise NotMigrated(f"the database is missing migrations {names}: run `pao migrate` first")


async def migrate(url: str) -> list[Migration]:
    """Apply what is pending, one migration per transaction; return what this call applied."""
    conn = await connect(url, autocommit=True, prepare=False)
    applied: list[Migration] = []
    try:
        with wrap_exceptions():
            while True:
                async with conn.transaction():
                    await conn.execute(QUERIES["migrations_lock"])
                    await conn.execute(QUERIES["migrations_create_table"])
                    todo = await pending(conn)
                    if not todo:
                        break
                    migration = todo[0]
                    await conn.execute(migration.sql)
                    await conn.execute(
                        QUERIES["migrations_record"],
                        {"version": migration.version, "name": migration.name},
                    )
                applied.append(migration)
    finally:
        await conn.close()
    return applied


async def check_database(url: str, *, wait_seconds: float = 30.0) -> None:
    """Wait for the database to answer, then refuse an unmigrated one (process start-up)."""
    import asyncio

    from pao.errors import DatabaseUnavailable

    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        try:
            conn = await connect(url, prepare=False)
            break
        except DatabaseUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1.0)
    try:
        await ensure_migrated(conn)
    finally:
        await conn.close()
