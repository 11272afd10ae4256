"""The migration runner and the schema's own guarantees."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pao.migrate import available, migrate
from tests.conftest import Server


def test_template_is_fully_migrated(db: psycopg.Connection[Any]) -> None:
    versions = [r[0] for r in db.execute("SELECT version FROM pao_migrations ORDER BY 1")]
    assert versions == [m.version for m in available()]


def test_concurrent_migrate_runs_apply_each_file_once(pg_server: Server) -> None:
    name = f"pao_race_{os.getpid()}"
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=name,
    )
    with janitor:
        url = pg_server.url_for(name)

        async def race() -> list[int]:
            results = await asyncio.gather(*(migrate(url) for _ in range(4)))
            return [len(r) for r in results]

        # One transaction per file, each under the lock: the runs may share the files out,
        # but each file is applied by exactly one of them.
        counts = asyncio.run(race())
        assert sum(counts) == len(available())
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT version FROM pao_migrations ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == [m.version for m in available()]
        assert asyncio.run(migrate(url)) == []


def test_audit_log_is_append_only(db: psycopg.Connection[Any]) -> None:
    db.execute("INSERT INTO audit_log (action, target_type) VALUES ('x', 'y')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("UPDATE audit_log SET action = 'z'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("DELETE FROM audit_log")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("TRUNCATE audit_log")
    assert db.execute("SELECT action FROM audit_log").fetchall() == [("x",)]


def test_named_checks_guard_the_states(db: psycopg.Connection[Any]) -> None:
    agent = db.execute(
        "INSERT INTO agents (name, token_hash, token_prefix, scopes) "
        "VALUES ('a', decode(repeat('ab', 32), 'hex'), 'pao_x', '{}') RETURNING id"
    ).fetchone()
    assert agent is not None
    with pytest.raises(psycopg.errors.CheckViolation, match="tasks_priority_range"):
        db.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
            "priority) VALUES (%s, 't', 'cron', '* * * * *', 'UTC', 0)",
            (agent[0],),
        )
    with pytest.raises(psycopg.errors.CheckViolation, match="agents_scopes_known"):
        db.execute(
            "INSERT INTO agents (name, token_hash, token_prefix, scopes) "
            "VALUES ('b', decode(repeat('cd', 32), 'hex'), 'pao_y', '{root}')"
        )
