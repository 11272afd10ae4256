"""A page after a cursor starts on the index at the cursor, even in a generic plan.

The API's connections prepare a statement once it has run a few times, and PostgreSQL may
then plan it once for any parameters. A cursor written `$after IS NULL OR (at, id) < ...`
is then no index condition but a filter: page 4,000 of 50 read the 200,000 rows before
it (91 ms over 400,000 runs). Written as one row comparison, it bounds the index scan.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pao.db import connect
from pao.sql import QUERIES
from pao.store.runs import list_runs
from pao.store.tasks import list_tasks
from pao.vocabulary import RunStatus
from tests.conftest import Server
from tests.helpers import database, new_agent, plan_nodes, queue_runs

ROWS = 20_000


def _generic_plan(
    db: psycopg.Connection[Any], statement: str, values: dict[str, Any]
) -> dict[str, Any]:
    """EXPLAIN of the statement planned once for any parameters, run with `values`."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, QUERIES[statement])
    db.execute("SET plan_cache_mode = force_generic_plan")
    try:
        db.execute(f"PREPARE listing AS {text}")
        args = sql.SQL(", ").join(sql.Literal(values[name]) for name in names)
        row = db.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE listing({})").format(args)
        ).fetchone()
        assert row is not None
        doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
        return dict(doc[0]["Plan"])
    finally:
        db.execute("DEALLOCATE ALL")
        db.execute("RESET plan_cache_mode")


def _cursor_bounds_the_scan(plan: dict[str, Any], table: str) -> bool:
    """Whether every scan of `table`, or of its partitions (`runs_p202612`, `runs_default`),
    starts at the cursor."""
    scans = [n for n in plan_nodes(plan) if _is_part_of(n.get("Relation Name", ""), table)]
    assert scans, plan
    # An index scan starts at the cursor; a bitmap scan's index condition is its recheck.
    return all("ROW(" in n.get("Index Cond", n.get("Recheck Cond", "")) for n in scans)


def _is_part_of(relation: str, table: str) -> bool:
    return relation == table or re.fullmatch(rf"{table}_(p\d{{6}}|default)", relation) is not None


@pytest.fixture(scope="module")
def history_template(pg_server: Server, template_db: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The history, made and analysed once for this file, kept as a template; with it, what
    `history` tells of it."""
    name = f"pao_history_{os.getpid()}"
    with database(pg_server, name, template_db, as_template=True):
        url = pg_server.url_for(name)
        with psycopg.connect(url, autocommit=True) as db:
            made = _make_history(url, db)
        yield name, made


_copies = itertools.count()


@pytest.fixture
def db_url(pg_server: Server, history_template: tuple[str, dict[str, Any]]) -> Iterator[str]:
    """Here every test's database is a copy of the one with the history in it."""
    template, _ = history_template
    name = f"{template}_{next(_copies)}"
    with database(pg_server, name, template):
        yield pg_server.url_for(name)


@pytest.fixture
def history(db_url: str, history_template: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """Many tasks and runs, analysed (in this test's copy); their owner and a cursor into each."""
    return history_template[1]


def _make_history(db_url: str, db: psycopg.Connection[Any]) -> dict[str, Any]:
    new_agent(db_url, ["admin"], name="owner")
    owner = db.execute("SELECT id FROM agents").fetchone()[0]  # type: ignore[index]
    db.execute(
        "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, status) "
        "SELECT %s, 't' || i, 'event', 'history', 'UTC', 'completed' "
        "FROM generate_series(1, %s) i",
        (owner, ROWS),
    )
    task = db.execute("SELECT id FROM tasks LIMIT 1").fetchone()[0]  # type: ignore[index]
    queue_runs(db, task, ROWS)
    db.execute("ANALYZE tasks, due_work, runs")

    def middle(table: str, at: str) -> tuple[Any, Any]:
        row = db.execute(
            f"SELECT {at}, id FROM {table} ORDER BY {at} DESC, id DESC OFFSET %s LIMIT 1",
            (ROWS // 2,),
        ).fetchone()
        assert row is not None
        return row[0], row[1]

    return {
        "owner": owner,
        "task": task,
        "runs": middle("runs", "queued_at"),
        "tasks": middle("tasks", "created_at"),
    }


@pytest.mark.parametrize(
    ("statement", "owned", "by_task"),
    [
        ("run_list", False, False),
        ("run_list", False, True),
        ("run_list_owned_recent", True, False),
        ("run_list_owned", True, False),
    ],
)
def test_a_page_of_runs_starts_at_its_cursor(
    db: psycopg.Connection[Any], history: dict[str, Any], statement: str, owned: bool, by_task: bool
) -> None:
    at, run_id = history["runs"]
    values = {
        "owner": history["owner"] if owned else None,
        "task_id": history["task"] if by_task else None,
        "status": None,
        "after_queued": at,
        "after_id": run_id,
        "limit": 51,
    }
    assert _cursor_bounds_the_scan(_generic_plan(db, statement, values), "runs")


def test_a_page_of_tasks_starts_at_its_cursor(
    db: psycopg.Connection[Any], history: dict[str, Any]
) -> None:
    at, task_id = history["tasks"]
    tasks = {
        "owner": None,
        "status": None,
        "created_by": None,
        "schedule_kind": None,
        "after_created": at,
        "after_id": task_id,
        "limit": 51,
    }
    assert _cursor_bounds_the_scan(_generic_plan(db, "task_list", tasks), "tasks")


def test_listings_are_planned_for_their_own_filters(db_url: str, history: dict[str, Any]) -> None:
    """Called again and again on one connection, the listings whose filters may each be
    absent are never prepared, so PostgreSQL never settles on a plan for any filters."""

    async def prepared_after_many_calls() -> list[str]:
        conn = await connect(db_url, autocommit=True)
        try:
            for _ in range(12):
                await list_runs(conn, owner=None, limit=51, after=None, status=RunStatus.FAILED)
                await list_runs(conn, owner=None, limit=51, after=None, task_id=history["task"])
                await list_runs(conn, owner=history["owner"], limit=51, after=None)
                await list_tasks(conn, owner=history["owner"], limit=51, after=None)
            cur = await conn.execute("SELECT statement FROM pg_prepared_statements")
            return [row["statement"] for row in await cur.fetchall()]
        finally:
            await conn.close()

    prepared = asyncio.run(prepared_after_many_calls())
    for name in ("run_list", "run_list_owned", "task_list"):
        first_line = QUERIES[name].split("\n", 1)[0]
        assert not [text for text in prepared if text.startswith(first_line)], name
    # The other statements are prepared as usual (the owner's look among the newest runs).
    assert prepared
