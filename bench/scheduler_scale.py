"""The scheduler with 1,000,000 active cron tasks: tick cost and process memory.

    .venv/bin/python -m bench.scheduler_scale [--tasks 1000000] [--ticks 300] [--seconds 30]

1. Tasks are written with one INSERT ... SELECT over generate_series: daily
   cron tasks at 1,440 different minutes, each with one no-op step. Their
   next_run_at is the next fire time at least 10 minutes away, so nothing is
   due while the tick is measured (a task whose fire time falls inside those
   10 minutes skips today's: harmless here).
2. Tick with nothing due, against 1,000 tasks and then against all of them:
   the wall time of the scheduler's own tick jobs (materialise, rescue,
   events; each its transaction on the scheduler's pool, as in the process),
   and the database time of their statements (EXPLAIN ANALYZE: planning +
   execution). The tick must follow the number due, not the number defined.
3. Tick with K due (K = 10, 100, 1,000): the same materialise job, which
   queues them.
4. A real `pao scheduler` process over all the tasks for `--seconds`, with
   5,000 of them falling due during that time: its resident memory every
   second and its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from bench.common import agent_id, database, percentiles, processes, show, wait_until
from bench.lateness import NOOP
from pao import db
from pao.settings import Settings
from pao.sql import QUERIES
from scheduler.service import EVENT_BATCH, MATERIALISE_BATCH, RESCUE_BATCH, Scheduler

# Daily at minute i % 60 of hour (i / 60) % 24: 1,440 distinct expressions. The next fire
# time at least 10 minutes from now, in UTC.
INSERT_TASKS = """
INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, payload,
                   next_run_at)
SELECT %(owner)s, 'scale ' || i, 'cron', (i %% 60) || ' ' || (i / 60 %% 24) || ' * * *',
       'UTC', %(payload)s::jsonb, fire + CASE WHEN fire < now() + interval '10 minutes'
                                              THEN interval '1 day' ELSE interval '0' END
FROM generate_series(%(first)s::int, %(last)s::int) i,
     LATERAL (SELECT date_trunc('day', now()) + make_interval(hours => i / 60 %% 24,
                                                             mins => i %% 60) AS fire) f
"""


def insert_tasks(url: str, owner: str, first: int, last: int) -> float:
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            INSERT_TASKS,  # type: ignore[arg-type]
            {"owner": owner, "payload": NOOP, "first": first, "last": last},
        )
        conn.execute("VACUUM ANALYZE tasks")
    return time.monotonic() - start


def db_ms(url: str) -> dict[str, float]:
    """Planning + execution time of each statement a tick with nothing due sends."""
    from datetime import UTC, datetime, timedelta

    horizon = datetime.now(UTC) + timedelta(seconds=Settings().lookahead_seconds)
    statements: list[tuple[str, str, dict[str, Any]]] = [
        ("materialise", "task_lock_due", {"horizon": horizon, "limit": MATERIALISE_BATCH}),
        ("rescue", "due_work_lock_expired", {"limit": RESCUE_BATCH}),
        ("events", "event_lock_pending", {"limit": EVENT_BATCH}),
    ]
    out: dict[str, float] = {}
    with psycopg.connect(url) as conn:
        for label, name, params in statements:
            runs = []
            for _ in range(20):
                row = conn.execute(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES[name],  # type: ignore[operator]
                    params,
                ).fetchone()
                assert row is not None
                doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
                runs.append(float(doc[0]["Planning Time"]) + float(doc[0]["Execution Time"]))
                conn.rollback()
            out[label] = statistics.median(runs)
    return out


async def tick_wall_ms(url: str, ticks: int) -> dict[str, list[float]]:
    """The scheduler's tick jobs, each timed from call to commit."""
    pool = db.make_pool(url, min_size=1, max_size=4, name="scheduler")
    await pool.open(wait=True)
    try:
        sched = Scheduler(Settings(), pool)
        jobs: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("materialise", sched.materialise),
            ("rescue", sched.rescue),
            ("events", sched.dispatch_events),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in jobs}
        times["tick"] = []
        for _ in range(ticks):
            total = 0.0
            for name, job in jobs:
                start = time.perf_counter()
                await job()
                took = (time.perf_counter() - start) * 1000
                times[name].append(took)
                total += took
            times["tick"].append(total)
        return times
    finally:
        await pool.close()


def measure_idle(url: str, label: str, ticks: int) -> None:
    walls = asyncio.run(tick_wall_ms(url, ticks))
    show(f"{label}: tick wall time", percentiles(walls["tick"]))
    for job in ("materialise", "rescue", "events"):
        show(f"  {job}", percentiles(walls[job]))
    dbt = db_ms(url)
    parts = "  ".join(f"{k}={v:.2f}ms" for k, v in dbt.items())
    print(f"{f'{label}: database time per tick':<44} {sum(dbt.values()):.2f}ms ({parts})")


def measure_due(url: str, due: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tasks SET next_run_at = now() - interval '1 second' WHERE id IN "
            "(SELECT id FROM tasks WHERE status = 'active' ORDER BY next_run_at DESC LIMIT %s)",
            (due,),
        )
        before = conn.execute("SELECT count(*) FROM due_work").fetchone()
    assert before is not None

    async def one() -> float:
        pool = db.make_pool(url, min_size=1, max_size=4, name="scheduler")
        await pool.open(wait=True)
        try:
            sched = Scheduler(Settings(), pool)
            start = time.perf_counter()
            await sched.materialise()
            return (time.perf_counter() - start) * 1000
        finally:
            await pool.close()

    took = asyncio.run(one())
    with psycopg.connect(url) as conn:
        after = conn.execute("SELECT count(*) FROM due_work").fetchone()
    assert after is not None
    queued = after[0] - before[0]
    print(f"{f'materialise with {due} due (1 job)':<44} {took:.1f}ms, {queued} queued", flush=True)
    if queued != due:
        raise SystemExit(f"expected {due} occurrences queued, got {queued}")


def rss_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def measure_process(url: str, seconds: int, due: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM due_work").fetchone()
        assert before is not None
        conn.execute(
            "UPDATE tasks SET next_run_at = now() + interval '5 seconds' "
            "+ random() * make_interval(secs => %s) WHERE id IN "
            "(SELECT id FROM tasks WHERE status = 'active' ORDER BY next_run_at DESC LIMIT %s)",
            (max(seconds - 10, 1), due),
        )
    samples: list[int] = []
    with processes(url, ("scheduler", {})) as procs:
        pid = procs[0].pid
        for _ in range(seconds):
            time.sleep(1)
            samples.append(rss_kb(pid, "VmRSS"))
        peak = rss_kb(pid, "VmHWM")
        wait_until(url, "SELECT count(*) FROM due_work", before[0] + due, 60)
    mb = [s / 1024 for s in samples]
    print(
        f"{f'scheduler process, {seconds}s, {due} fell due':<44} "
        f"RSS first {mb[0]:.1f} MB, last {mb[-1]:.1f} MB, max {max(mb):.1f} MB, "
        f"peak (VmHWM) {peak / 1024:.1f} MB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    print(f"pao scheduler scale benchmark, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    with database() as url:
        owner = agent_id(url)
        small = min(1000, args.tasks)
        insert_tasks(url, owner, 1, small)
        measure_idle(url, f"{small:,} tasks, none due", args.ticks)
        took = insert_tasks(url, owner, small + 1, args.tasks)
        print(f"{f'inserted {args.tasks:,} tasks in all':<44} {took:.1f}s", flush=True)
        measure_idle(url, f"{args.tasks:,} tasks, none due", args.ticks)
        for due in (10, 100, 1000):
            measure_due(url, due)
        measure_process(url, args.seconds, min(5000, args.tasks // 2))


if __name__ == "__main__":
    main()
