"""The worker's query plans over a large `due_work` (claim, end, lease renewal, next due):
the indexes they rely on, never a Seq Scan.

A claim runs many times a second on every worker; over a table of long
history a sequential scan would make each one cost the table's size. The
plan is read from the same named statements the worker sends, with the same
kinds of parameters, after ANALYZE over a table shaped like production's:
mostly finished history, some work queued for later, a little due now,
some running, some under concurrency keys.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from pao.sql import QUERIES
from pao.store.work import CLAIM_LOCK_SPACE
from tests.conftest import Server
from tests.helpers import database, in_table, new_agent, plan_nodes

ROWS = 100_000


def _explain(
    db: psycopg.Connection[Any], name: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    row = db.execute("EXPLAIN (FORMAT JSON) " + QUERIES[name], params).fetchone()
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return list(plan_nodes(doc[0]["Plan"]))


# The types psycopg sends the worker's parameters as.
_TYPES = {
    "limit": "bigint",
    "worker_id": "text",
    "lease_seconds": "float8",
    "ids": "bigint[]",
    "endings": "jsonb",
    "progress": "jsonb",
}


def _explain_once(
    db: psycopg.Connection[Any], name: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The plan the worker keeps for a statement: prepared, and planned once for any values
    (worker/main.py: plan_cache_mode force_generic_plan)."""
    names: list[str] = []

    def placeholder(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", placeholder, QUERIES[name]).replace("%%", "%")
    db.execute("SET plan_cache_mode = force_generic_plan")
    types = ", ".join(_TYPES[n] for n in names)
    db.execute(f"PREPARE once ({types}) AS {text}")
    try:
        # Values written into the statement: EXPLAIN EXECUTE takes no bound parameters.
        values = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Literal(params[n]), sql.SQL(_TYPES[n])) for n in names
        )
        row = db.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE once({})").format(values)
        ).fetchone()
    finally:
        db.execute("DEALLOCATE once")
        db.execute("RESET plan_cache_mode")
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return list(plan_nodes(doc[0]["Plan"]))


def _scans_of(nodes: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    """The scans of `table`, or of its partitions (runs is partitioned by month)."""
    return [n for n in nodes if in_table(n.get("Relation Name"), table)]


def _filled(db: psycopg.Connection[Any], nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scans among `nodes` of relations that hold pages: a month's partition made ahead
    and still empty is read whole (nothing) rather than by an index, which is right."""
    empty = {
        str(r[0])
        for r in db.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND relpages = 0")
    }
    return [n for n in nodes if n.get("Relation Name") not in empty]


def _index_and_partitions(db: psycopg.Connection[Any], index: str) -> set[str]:
    """An index of a partitioned table and its partitions' indexes, by name."""
    rows = db.execute(
        "SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass)", (index,)
    ).fetchall()
    return {str(r[0]) for r in rows}


def _indexes(scan: dict[str, Any]) -> set[str]:
    """The indexes a scan reads: its own, or its bitmap's (not those of its filter's subplans)."""
    found = {scan["Index Name"]} if "Index Name" in scan else set()
    for child in scan.get("Plans", []):
        if child["Node Type"].startswith("Bitmap"):
            found |= _indexes(child)
    return found


@pytest.fixture(scope="module")
def large_template(pg_server: Server, template_db: str) -> Iterator[str]:
    """The large database, built and analysed once for this file's tests, each of which gets
    a copy of its own (statistics included, so each plans as over the one built)."""
    name = f"pao_large_due_work_{os.getpid()}"
    with database(pg_server, name, template_db, as_template=True):
        url = pg_server.url_for(name)
        with psycopg.connect(url, autocommit=True) as db:
            _fill(url, db)
        yield name


@pytest.fixture
def large_due_work(pg_server: Server, large_template: str) -> Iterator[psycopg.Connection[Any]]:
    """ROWS occurrences over 100 tasks, each with its run, analysed: a fresh copy."""
    name = f"{large_template}_{next(_copies)}"
    with (
        database(pg_server, name, large_template),
        psycopg.connect(pg_server.url_for(name), autocommit=True) as db,
    ):
        yield db


_copies = itertools.count()


def _fill(db_url: str, db: psycopg.Connection[Any]) -> None:
    """ROWS occurrences over 100 tasks, each with its run, analysed."""
    new_agent(db_url, ["admin"], name="owner")
    db.execute(
        "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone) "
        "SELECT (SELECT id FROM agents LIMIT 1), 'plan ' || i, 'event', 'plan.' || i, 'UTC' "
        "FROM generate_series(1, 100) i"
    )
    # i % 100: 0 due now, 1 running, 2-9 queued for later, the rest finished; every tenth
    # task's work carries a concurrency key.
    db.execute(
        """
        WITH t AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM tasks)
        INSERT INTO due_work (task_id, scheduled_for, run_after, reason, state, lease_owner,
                              lease_expires_at, finished_at, claim_key, claim_limit, run_id)
        SELECT t.id, s.at, s.at, 'schedule', s.state,
               CASE WHEN s.state = 'running' THEN 'worker-x' END,
               CASE WHEN s.state = 'running' THEN now() + interval '5 minutes' END,
               CASE WHEN s.state IN ('queued', 'running') THEN NULL ELSE s.at END,
               CASE WHEN t.n %% 10 = 0 THEN 'key/' || t.n END,
               CASE WHEN t.n %% 10 = 0 THEN 2 END, pao_uuid_v7()
        FROM generate_series(1, %(rows)s) i
        JOIN t ON t.n = i %% 100 + 1
        CROSS JOIN LATERAL (SELECT
            CASE WHEN i %% 100 = 0 THEN now() - i * interval '1 millisecond'
                 WHEN i %% 100 < 10 THEN now() + i * interval '1 minute'
                 ELSE now() - interval '1 day' - i * interval '1 minute' END AS at,
            CASE WHEN i %% 100 IN (0, 2, 3, 4, 5, 6, 7, 8, 9) THEN 'queued'
                 WHEN i %% 100 = 1 THEN 'running'
                 ELSE 'succeeded' END AS state) s
        """,
        {"rows": ROWS},
    )
    db.execute(
        "INSERT INTO runs (id, due_work_id, task_id, scheduled_for, status, started_at, "
        "finished_at) SELECT run_id, id, task_id, scheduled_for, state, "
        "CASE WHEN state <> 'queued' THEN scheduled_for END, finished_at FROM due_work"
    )
    db.execute("ANALYZE due_work")
    db.execute("ANALYZE runs")


def test_claim_lock_walks_the_partial_claim_index(large_due_work: psycopg.Connection[Any]) -> None:
    nodes = _explain(
        large_due_work, "due_work_claim_lock", {"limit": 32, "lock_space": CLAIM_LOCK_SPACE}
    )
    scans = _scans_of(nodes, "due_work")
    assert [n["Node Type"] for n in scans if n["Node Type"] == "Seq Scan"] == [], scans
    main = [n for n in scans if n.get("Alias") == "d"]
    assert len(main) == 1, scans
    # An ordered walk of the index: LIMIT stops it after the first due rows.
    assert main[0]["Node Type"] in ("Index Scan", "Index Only Scan"), main[0]
    assert _indexes(main[0]) == {"due_work_claim_idx"}, main[0]
    # The free-slot count of a concurrency key looks only at running rows of the key.
    keyed = [n for n in scans if n.get("Alias") == "r"]
    assert keyed, scans
    assert set().union(*map(_indexes, keyed)) == {"due_work_claim_key_running_idx"}, keyed


def test_one_statement_claim_walks_the_claim_index(
    large_due_work: psycopg.Connection[Any],
) -> None:
    nodes = _explain(
        large_due_work,
        "due_work_claim",
        {"limit": 32, "worker_id": "worker-y", "lease_seconds": 60.0},
    )
    scans = _scans_of(nodes, "due_work")
    # The large tables only: a hundred tasks fit in one page, which is best read whole once
    # autovacuum has analysed them.
    large = _filled(large_due_work, scans + _scans_of(nodes, "runs"))
    assert all(n["Node Type"] != "Seq Scan" for n in large), large
    main = [n for n in scans if n.get("Alias") == "d" and n.get("Parent Relationship") != "Member"]
    walks = [n for n in main if "due_work_claim_idx" in _indexes(n)]
    assert len(walks) == 1, scans
    assert walks[0]["Node Type"] in ("Index Scan", "Index Only Scan"), walks[0]
    keyed = [n for n in scans if n.get("Alias") == "r"]
    assert set().union(*map(_indexes, keyed)) == {"due_work_claim_key_running_idx"}, keyed
    for table in ("runs", "tasks"):
        assert _scans_of(nodes, table), f"no scan of {table}"


def test_claim_start_reaches_work_and_runs_by_key(large_due_work: psycopg.Connection[Any]) -> None:
    ids = [
        r[0]
        for r in large_due_work.execute(
            "SELECT id FROM due_work WHERE state = 'queued' AND run_after <= now() LIMIT 32"
        )
    ]
    assert len(ids) == 32
    nodes = _explain(
        large_due_work,
        "due_work_claim_start",
        {"ids": ids, "worker_id": "worker-y", "lease_seconds": 60.0},
    )
    for table in ("due_work", "runs"):
        scans = _scans_of(nodes, table)
        assert scans, f"no scan of {table}"
        filled = _filled(large_due_work, scans)
        assert all(n["Node Type"] != "Seq Scan" for n in filled), scans


@pytest.fixture
def held_by_y(large_due_work: psycopg.Connection[Any]) -> list[tuple[int, int]]:
    """32 of the fixture's thousand running rows handed to worker-y; the rest stay with x."""
    held = large_due_work.execute(
        "UPDATE due_work SET lease_owner = 'worker-y' WHERE id IN ("
        "SELECT id FROM due_work WHERE state = 'running' ORDER BY id LIMIT 32) "
        "RETURNING id, attempt"
    ).fetchall()
    assert len(held) == 32
    large_due_work.execute("ANALYZE due_work")
    return [(i, a) for i, a in held]


def test_end_reaches_its_own_rows_by_id(
    large_due_work: psycopg.Connection[Any], held_by_y: list[tuple[int, int]]
) -> None:
    """A worker's end must cost its batch, not every worker's running work: through the
    lease index, worker-y would read all thousand running rows to find its 32."""
    endings: list[dict[str, Any]] = [
        {"id": i, "attempt": a, "state": "succeeded", "steps": [], "error": None}
        for i, a in held_by_y
    ]
    nodes = _explain(
        large_due_work,
        "due_work_finish_many",
        {"worker_id": "worker-y", "endings": Jsonb(endings)},
    )
    work = _scans_of(nodes, "due_work")
    assert work, "no scan of due_work"
    assert set().union(*map(_indexes, work)) == {"due_work_pkey"}, work
    runs = _scans_of(nodes, "runs")
    assert runs, "no scan of runs"
    used = set().union(*map(_indexes, runs))
    assert used, runs
    assert used <= _index_and_partitions(large_due_work, "runs_pkey"), runs


def test_renewal_reaches_its_own_rows_by_id(
    large_due_work: psycopg.Connection[Any], held_by_y: list[tuple[int, int]]
) -> None:
    """Every worker renews every second: each renewal costs what that worker holds."""
    nodes = _explain(
        large_due_work,
        "due_work_renew_leases",
        {"ids": [i for i, _ in held_by_y], "worker_id": "worker-y", "lease_seconds": 60.0},
    )
    work = _scans_of(nodes, "due_work")
    assert work, "no scan of due_work"
    assert set().union(*map(_indexes, work)) == {"due_work_pkey"}, work


def test_next_due_walks_the_claim_index_per_priority(
    large_due_work: psycopg.Connection[Any],
) -> None:
    """An idle worker asks after every claim: the answer must not cost the queue's length."""
    nodes = _explain(large_due_work, "due_work_next_due", {})
    work = [n for n in _scans_of(nodes, "due_work") if n.get("Alias") == "d"]
    assert work, "no scan of due_work"
    assert all(_indexes(n) == {"due_work_claim_idx"} for n in work), work
    # Each walk stops at its priority's first row that a worker could take.
    stopped = [
        child
        for n in nodes
        if n["Node Type"] == "Limit"
        for child in n.get("Plans", [])
        if child.get("Relation Name") == "due_work"
    ]
    assert stopped, nodes
    got = large_due_work.execute(QUERIES["due_work_next_due"]).fetchone()
    want = large_due_work.execute(
        "SELECT min(d.run_after) FROM due_work d WHERE d.state = 'queued' AND (d.claim_key IS NULL"
        " OR (SELECT count(*) FROM due_work r WHERE r.state = 'running'"
        " AND r.claim_key = d.claim_key) < d.claim_limit)"
    ).fetchone()
    assert got is not None
    assert want is not None
    assert got[0] == want[0]
    assert got[0] is not None


def test_hot_tables_keep_room_for_updates(db: psycopg.Connection[Any]) -> None:
    # runs and occurrences are partitioned (version_0020.sql): their partitions hold the
    # rows, so each partition carries the options, those made ahead by the scheduler too.
    db.execute("SELECT pao_history_partitions_ensure(now() + interval '6 months', 0)")
    rows = db.execute(
        "SELECT p.relname, c.relname, c.reloptions FROM pg_class c "
        "JOIN LATERAL (SELECT 'due_work' AS relname WHERE c.relname = 'due_work' "
        "    UNION ALL SELECT t.relname FROM (VALUES ('runs'), ('occurrences')) t (relname) "
        "    WHERE c.oid IN (SELECT relid FROM pg_partition_tree(t.relname::regclass) "
        "                    WHERE isleaf)) p ON true"
    ).fetchall()
    options: dict[str, list[dict[str, str]]] = {}
    for table, _, opts in rows:
        options.setdefault(table, []).append(dict(o.split("=", 1) for o in opts))
    assert len(options["runs"]) >= 5  # 4 months and the default
    assert len(options["occurrences"]) >= 5
    assert all(o["fillfactor"] == "20" for o in options["runs"])  # see test_run_storage.py
    assert options["due_work"][0]["fillfactor"] == "90"
    for table in ("runs", "due_work"):
        assert all(float(o["autovacuum_vacuum_scale_factor"]) <= 0.02 for o in options[table])
    # A quiet queue is not analysed and vacuumed at every pass (each pass makes every
    # connection plan its statements on the table again).
    for table in ("runs", "due_work", "occurrences"):
        for o in options[table]:
            assert int(o["autovacuum_analyze_threshold"]) >= 1000
            assert int(o["autovacuum_vacuum_threshold"]) >= 1000


@pytest.mark.parametrize(
    "name",
    ["due_work_claim", "due_work_claim_start", "due_work_finish_many", "run_save_steps_many"],
)
def test_the_plan_made_once_reaches_each_run_by_its_id(
    large_due_work: psycopg.Connection[Any], held_by_y: list[tuple[int, int]], name: str
) -> None:
    """The worker keeps one plan per statement, made for any batch. It must probe each run's
    partition by the run's id: a plan that reads a range of a month's runs and joins them by
    hash (what a plan made once did with the claim before version_0021.sql) reads every
    queued run of the month for each claim, 10 ms for a batch of 128."""
    due = [
        r[0]
        for r in large_due_work.execute(
            "SELECT id FROM due_work WHERE state = 'queued' AND run_after <= now() LIMIT 32"
        )
    ]
    endings: list[dict[str, Any]] = [
        {"id": i, "attempt": a, "state": "succeeded", "steps": [], "error": None}
        for i, a in held_by_y
    ]
    progress = [
        {"run_id": str(r), "id": i, "attempt": a, "steps": []}
        for i, a, r in large_due_work.execute(
            "SELECT id, attempt, run_id FROM due_work WHERE lease_owner = 'worker-y'"
        )
    ]
    params: dict[str, Any] = {
        "limit": 32,
        "worker_id": "worker-y",
        "lease_seconds": 60.0,
        "ids": due,
        "endings": Jsonb(endings),
        "progress": Jsonb(progress),
    }
    nodes = _explain_once(large_due_work, name, params)
    runs = [
        n for n in _filled(large_due_work, _scans_of(nodes, "runs")) if "Scan" in n["Node Type"]
    ]
    assert runs, nodes
    for scan in runs:
        assert scan["Node Type"] == "Index Scan", scan
        assert _indexes(scan) <= _index_and_partitions(large_due_work, "runs_pkey"), scan
        assert re.fullmatch(r"\(id = \w+\.run_id\)", scan["Index Cond"]), scan
    joins = [n for n in nodes if n["Node Type"] in ("Hash Join", "Merge Join")]
    assert not [j for j in joins if _scans_of(list(plan_nodes(j)), "runs")], joins
