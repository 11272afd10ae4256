"""A long history: does the hot path stay as fast as on an empty one, and is a month cheap
to prune?

    .venv/bin/python -m bench.history [--runs 10000000] [--baseline 25000] [--repeat 30]

A throwaway database first holds `--baseline` runs this month (enough for page 1,000 of
`GET /runs`), and each operation is timed: the scheduler's tick queueing 20 due
occurrences (each with its run and decision record), a worker's claim of 10 and the end of
those 10 (the statements the worker sends), `GET /runs` first page, page 1,000 and
`?status=failed` (in process, through the app, as the tasks' owner). Then `--runs` runs of
history are written over the four months before this one with INSERT ... SELECT
generate_series (not the API): each run with its finished occurrence, two log lines and
its decision record, one in ten failed. The operations are timed again; the table gives
both medians and their ratio. Last, the oldest month is pruned as the scheduler does
(`drop_partitions`: its partitions dropped whole), timed, with the tables' sizes before and
after, then the first batches of the queue's row deletes (due_work, not partitioned).

History rows are written at fillfactor 100 (the runs' partitions are put back to 20
after): a run inserted queued at 20 then grows in place to fill its page about two thirds,
so the sizes here are a little smaller than a live database's. Try 100k first; 10M needs
about 15 GB of disk and an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from api.app import create_app
from bench.common import database
from bench.lateness import NOOP
from pao import db as pao_db
from pao.db import connect
from pao.domain.agents import create_agent
from pao.pagination import encode_cursor
from pao.settings import Settings
from pao.sql import QUERIES
from scheduler.housekeeping import drop_partitions, month_start, prune_step, rows_before
from scheduler.service import Scheduler

TASKS = 1000
DUE_PER_TICK = 20
CLAIM = 10
HISTORY_MONTHS = 4
CHUNK = 250_000
PAGE = 20
STEPS = json.dumps([{"id": "noop", "uses": "sleep", "status": "succeeded", "output": None}])

FILL = """
WITH w AS (
    INSERT INTO due_work (task_id, scheduled_for, run_after, reason, state, finished_at)
    SELECT (%(tasks)s::uuid[])[1 + i %% %(ntasks)s], s.at, s.at, 'schedule',
           CASE WHEN i %% 10 = 0 THEN 'failed' ELSE 'succeeded' END, s.at + interval '1 s'
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) i
    CROSS JOIN LATERAL (SELECT %(start)s::timestamptz + i * %(step)s::interval AS at) s
    RETURNING id, task_id, scheduled_for, state
), r AS (
    INSERT INTO runs (id, due_work_id, task_id, status, scheduled_for, queued_at, started_at,
                      finished_at, worker_id, steps, error)
    SELECT pao_uuid_v7(scheduled_for), id, task_id, state, scheduled_for, scheduled_for,
           scheduled_for, scheduled_for + interval '1 s', 'bench', %(steps)s::jsonb,
           CASE WHEN state = 'failed' THEN 'step noop failed: boom' END
    FROM w
    RETURNING id
), l AS (
    INSERT INTO run_logs (run_id, message)
    SELECT id, 'step noop: ' || n FROM r CROSS JOIN generate_series(1, 2) n
)
INSERT INTO occurrences (task_id, nominal_at, decision, due_work_id, decided_at)
SELECT task_id, scheduled_for, 'queued', id, scheduled_for FROM w
"""

SIZES = """
SELECT t.name,
       (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
        WHERE c.relkind = 'r' AND (c.oid = t.name
              OR c.oid IN (SELECT relid FROM pg_partition_tree(t.name)))) AS bytes,
       (SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables
        WHERE relid = t.name OR relid IN (SELECT relid FROM pg_partition_tree(t.name))) AS dead
FROM (VALUES ('runs'::regclass), ('run_logs'::regclass), ('occurrences'::regclass),
             ('due_work'::regclass)) t (name)
"""


def owner_and_tasks(url: str) -> tuple[str, list[str]]:
    """An agent that owns every task (runs:read to list them), and its cron tasks."""

    async def go() -> str:
        conn = await connect(url)
        async with conn.transaction():
            new = await create_agent(
                conn, actor=None, name="history", scopes=["tasks:read", "runs:read"]
            )
        await conn.close()
        return new.token

    token = asyncio.run(go())
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
            "payload, next_run_at) "
            "SELECT (SELECT id FROM agents WHERE name = 'history'), 'history ' || i, 'cron', "
            "       '0 0 1 1 *', 'UTC', %s::jsonb, now() + interval '300 days' "
            "FROM generate_series(1, %s) i RETURNING id::text",
            (NOOP, TASKS),
        ).fetchall()
    return token, [str(r[0]) for r in rows]


def fill(url: str, tasks: list[str], count: int, start: datetime, end: datetime) -> None:
    """`count` finished runs spread evenly from `start` to `end`, a chunk per transaction."""
    if count <= 0:
        return
    step = (end - start) / (count + 1)
    with psycopg.connect(url, autocommit=True) as conn:
        for first in range(1, count + 1, CHUNK):
            conn.execute(
                FILL,  # type: ignore[arg-type]
                {
                    "tasks": tasks,
                    "ntasks": len(tasks),
                    "first": first,
                    "last": min(first + CHUNK - 1, count),
                    "start": start,
                    "step": step,
                    "steps": STEPS,
                },
            )


def set_fillfactor(url: str, value: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        leaves = conn.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree('runs') WHERE isleaf"
        ).fetchall()
        for (name,) in leaves:
            conn.execute(f"ALTER TABLE {name} SET (fillfactor = {value})")  # type: ignore[arg-type]


def vacuum(url: str) -> None:
    """Vacuumed, analysed and checkpointed: each phase is timed from the same clean state, not
    while the checkpointer writes out the fill (its first changes to each page would also log
    the whole page)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


async def timed(repeat: int, op: Callable[[], Awaitable[object]]) -> float:
    """The median of `repeat` timings of `op`, in milliseconds (after one warm-up call)."""
    await op()
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        await op()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


async def hot_path(url: str, token: str, tasks: list[str], repeat: int) -> dict[str, float]:
    """The medians of the operations that must not slow down as history grows."""
    with psycopg.connect(url) as db:
        began = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    pool = pao_db.make_pool(url, min_size=1, max_size=4)
    await pool.open(wait=True)
    figures: dict[str, float] = {}
    try:
        sched = Scheduler(Settings(), pool)
        due = tasks[:DUE_PER_TICK]

        async def tick() -> None:
            async with pao_db.connection(pool) as conn:
                await conn.execute(
                    "UPDATE tasks SET next_run_at = date_trunc('milliseconds', now()) "
                    "WHERE id = ANY(%s::uuid[])",
                    (due,),
                )
            queued = await sched.materialise()
            assert queued == len(due), f"the tick queued {queued} of {len(due)}"

        figures["scheduler tick (20 due)"] = await timed(repeat, tick)

        conn = await connect(url, autocommit=True)
        # Plans kept as the worker keeps them (worker/main.py: make_pool's plan_once).
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        claimed: list[dict[str, Any]] = []

        async def claim() -> None:
            cur = await conn.execute(
                QUERIES["due_work_claim"],
                {"limit": CLAIM, "worker_id": "bench", "lease_seconds": 60.0},
            )
            rows = [r for r in await cur.fetchall() if r["kind"] != "keyed"]
            assert rows, "nothing to claim"
            claimed.extend(rows)

        async def end() -> None:
            batch, claimed[:] = claimed[:CLAIM], claimed[CLAIM:]
            endings = [
                {
                    "id": r["id"],
                    "attempt": r["attempt"],
                    "state": "succeeded",
                    "steps": [],
                    "error": None,
                }
                for r in batch
            ]
            await conn.execute(
                QUERIES["due_work_finish_many"], {"worker_id": "bench", "endings": Jsonb(endings)}
            )

        # Enough queued work for every claim: each tick above queued 20.
        figures["worker claim (10)"] = await timed(repeat, claim)
        figures["worker end (10)"] = await timed(repeat, end)
        await conn.close()
    finally:
        await pool.close()

    app = create_app(Settings(pool_min_size=1, pool_max_size=4), database_url=url)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {token}"}
        with psycopg.connect(url) as db:
            row = db.execute(
                "SELECT queued_at, id FROM runs ORDER BY queued_at DESC, id DESC OFFSET %s LIMIT 1",
                (PAGE * 999 - 1,),
            ).fetchone()
        assert row is not None, "fewer runs than page 1,000 needs: raise --baseline"
        cursor = encode_cursor(row[0], row[1])

        def get(params: dict[str, str]) -> Callable[[], Awaitable[None]]:
            async def op() -> None:
                resp = client.get("/runs", params=params, headers=headers)
                assert resp.status_code == 200, resp.text
                assert len(resp.json()["items"]) == PAGE

            return op

        figures["GET /runs first page"] = await timed(repeat, get({}))
        figures["GET /runs page 1,000"] = await timed(repeat, get({"cursor": cursor}))
        figures["GET /runs?status=failed"] = await timed(repeat, get({"status": "failed"}))
    # The occurrences queued above go, with their runs: left behind, they would be the newest
    # runs of the next measure, twice as many, none of them failed, and its `?status=failed`
    # would walk past them all (1.7 times the time, whatever the history). Vacuumed, so that
    # the dead rows counted after pruning are the pruning's.
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DELETE FROM due_work WHERE created_at >= %s", (began,))
        db.execute("VACUUM due_work, runs, occurrences")
    return figures


def sizes(url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return {str(n): (int(b), int(d)) for n, b, d in conn.execute(SIZES).fetchall()}


async def prune_month(url: str, now: datetime, retention: timedelta, batches: int) -> None:
    before = sizes(url)
    conn = await connect(url)
    try:
        started = time.perf_counter()
        async with conn.transaction():
            outcomes = await drop_partitions(conn, now=now, retention=retention)
        dropped_ms = (time.perf_counter() - started) * 1000
        took = []
        for _ in range(batches):
            started = time.perf_counter()
            async with conn.transaction():
                n = await prune_step(conn, now=now, retention=retention)
            took.append((time.perf_counter() - started) * 1000)
            if n == 0:
                break
        cur = await conn.execute(
            "SELECT count(*) AS n FROM due_work WHERE finished_at < %s",
            (rows_before(now, retention),),
        )
        left = (await cur.fetchone() or {"n": 0})["n"]
    finally:
        await conn.close()
    after = sizes(url)
    names = ", ".join(o.partition_name for o in outcomes if o.done)
    print(f"\nprune a month: dropped {names or 'nothing'} in {dropped_ms:.0f} ms")
    for o in outcomes:
        if not o.done:
            print(f"  kept {o.partition_name}: {o.detail}")
    print(f"{'table':<14} {'before':>12} {'after':>12} {'dead rows after':>16}")
    for name, (size, _) in before.items():
        print(
            f"{name:<14} {size / 2**20:>10.1f}MB {after[name][0] / 2**20:>10.1f}MB "
            f"{after[name][1]:>16,}"
        )
    if took:
        print(
            f"queue rows (due_work) of the month, deleted {len(took)} batches of 1,000: "
            f"median {statistics.median(took):.1f} ms a batch, {left:,} rows left to delete"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000_000, help="runs of history")
    parser.add_argument("--baseline", type=int, default=25_000, help="runs this month")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--prune-batches", type=int, default=50)
    args = parser.parse_args()
    print(f"pao history benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}", flush=True)
    with database() as url:
        token, tasks = owner_and_tasks(url)
        now = datetime.now(UTC)
        this = month_start(now)
        first = month_start(this - timedelta(days=HISTORY_MONTHS * 31 - 15))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT count(*) FROM pao_history_partitions_ensure(%s, %s)",
                (first, HISTORY_MONTHS),
            )
        set_fillfactor(url, 100)
        fill(url, tasks, args.baseline, this, min(now, this + timedelta(days=27)))
        vacuum(url)
        empty = asyncio.run(hot_path(url, token, tasks, args.repeat))

        started = time.perf_counter()
        fill(url, tasks, args.runs, first, this)
        set_fillfactor(url, 20)
        vacuum(url)
        print(
            f"wrote {args.runs:,} runs of history ({HISTORY_MONTHS} months) in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        full = asyncio.run(hot_path(url, token, tasks, args.repeat))

        print(
            f"\n{'median of ' + str(args.repeat):<28} {'empty':>10} {f'{args.runs:,} runs':>14}"
            f" {'ratio':>7}"
        )
        for name, ms in empty.items():
            print(f"{name:<28} {ms:>8.2f}ms {full[name]:>12.2f}ms {full[name] / ms:>7.2f}")

        # The oldest month past the retention: the scheduler's clock a day into the month
        # after it plus the retention.
        retention = timedelta(days=30)
        second = month_start(first + timedelta(days=32))
        asyncio.run(
            prune_month(url, second + retention + timedelta(days=1), retention, args.prune_batches)
        )


if __name__ == "__main__":
    main()
