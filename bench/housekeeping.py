"""Housekeeping over a long history: the cost of one prune batch as history grows.

    .venv/bin/python -m bench.housekeeping [--history 100000,400000] [--batches 5]

For each size, a fresh database holds that many finished runs past the
retention, each with its occurrence and decision record, every tenth queued by
an event, plus as many runs still within it. The scheduler's `prune_step`
(1,000 rows of each kind per batch, one transaction each, as in the process)
then runs `--batches` times: the milliseconds of each batch. A batch's cost
must follow the batch, not the history: each deleted occurrence and event
sets the references to it to NULL, which without an index on the referencing
column reads the whole referencing table once per deleted row.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

import psycopg

from bench.common import agent_id, database, percentiles, show
from bench.lateness import NOOP
from pao.db import connect
from scheduler.housekeeping import prune_step

RETENTION = timedelta(days=30)

FILL = """
WITH e AS (
    INSERT INTO events (type, published_by, dispatched_at, received_at)
    SELECT 'bench.history', %(owner)s, s.at, s.at
    FROM generate_series(1, %(n)s) i
    CROSS JOIN LATERAL (SELECT now() - %(age)s::interval - i * interval '1 ms' AS at) s
    WHERE i %% 10 = 0
    RETURNING id, received_at
), w AS (
    INSERT INTO due_work (task_id, scheduled_for, run_after, reason, event_id, state,
                          finished_at)
    SELECT %(task)s, s.at, s.at, CASE WHEN e.id IS NULL THEN 'schedule' ELSE 'event' END,
           e.id, 'succeeded', s.at
    FROM generate_series(1, %(n)s) i
    CROSS JOIN LATERAL (SELECT now() - %(age)s::interval - i * interval '1 ms' AS at) s
    LEFT JOIN e ON e.received_at = s.at
    RETURNING id, task_id, scheduled_for
), r AS (
    INSERT INTO runs (due_work_id, task_id, status, scheduled_for, queued_at, started_at,
                      finished_at)
    SELECT id, task_id, 'succeeded', scheduled_for, scheduled_for, scheduled_for,
           scheduled_for
    FROM w
)
INSERT INTO occurrences (task_id, nominal_at, decision, due_work_id, decided_at)
SELECT task_id, scheduled_for, 'queued', id, scheduled_for FROM w
"""


def fill(url: str, history: int) -> None:
    owner = agent_id(url)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
            "payload) VALUES (%s, 'history', 'event', 'bench.history', 'UTC', %s::jsonb) "
            "RETURNING id",
            (owner, NOOP),
        ).fetchone()
        assert row is not None
        for age in ("40 days", "1 day"):  # past the retention, and within it
            conn.execute(FILL, {"owner": owner, "task": row[0], "n": history, "age": age})
        conn.execute("VACUUM ANALYZE")


async def prune(url: str, batches: int) -> list[float]:
    conn = await connect(url)
    took = []
    try:
        for _ in range(batches):
            started = time.perf_counter()
            async with conn.transaction():
                await prune_step(conn, now=datetime.now(UTC), retention=RETENTION)
            took.append((time.perf_counter() - started) * 1000)
    finally:
        await conn.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", default="100000,400000", help="comma-separated sizes")
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    print(f"pao housekeeping benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}", flush=True)
    for history in (int(n) for n in args.history.split(",")):
        with database() as url:
            fill(url, history)
            took = asyncio.run(prune(url, args.batches))
        show(f"prune batch, {history:,} runs past retention", percentiles(took))


if __name__ == "__main__":
    main()
