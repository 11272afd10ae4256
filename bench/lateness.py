"""Lateness: run start minus scheduled_for, for idle single occurrences and a burst.

    .venv/bin/python bench/lateness.py [--idle 200] [--burst 10000]

Real processes: one scheduler and two workers on a throwaway embedded
PostgreSQL. Each task is a `once` task with one no-op step (`sleep 0`).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta

import psycopg

from bench.common import agent_id, database, percentiles, processes, show, wait_until

NOOP = json.dumps({"pipeline": [{"id": "noop", "uses": "sleep", "with": {"seconds": 0}}]})


def insert_once_tasks(url: str, owner: str, times: list[datetime]) -> None:
    """Tasks as the API would store them (validated shape), written in bulk for speed."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
            "payload, next_run_at) VALUES (%s, 'bench', 'once', %s, 'UTC', %s::jsonb, %s)",
            [(owner, t.isoformat(), NOOP, t) for t in times],
        )


def lateness_ms(url: str) -> list[float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM started_at - scheduled_for) * 1000 FROM runs "
            "WHERE started_at IS NOT NULL"
        ).fetchall()
    return [float(r[0]) for r in rows]


def idle(count: int) -> None:
    with database() as url:
        owner = agent_id(url)
        start = datetime.now(UTC) + timedelta(seconds=8)
        insert_once_tasks(
            url, owner, [start + timedelta(milliseconds=150 * i) for i in range(count)]
        )
        worker = ("worker", {"PAO_WORKER_CONCURRENCY": "4"})
        with processes(url, ("scheduler", {}), worker, worker):
            wait_until(
                url,
                "SELECT count(*) FROM runs WHERE status = 'succeeded'",
                count,
                8 + count * 0.15 + 30,
            )
        show("idle single occurrences (1 every 150 ms)", percentiles(lateness_ms(url)))


def burst(count: int, concurrency: int) -> None:
    with database() as url:
        owner = agent_id(url)
        due = (datetime.now(UTC) + timedelta(seconds=25)).replace(microsecond=0)
        insert_once_tasks(url, owner, [due] * count)
        worker = ("worker", {"PAO_WORKER_CONCURRENCY": str(concurrency)})
        with processes(url, ("scheduler", {}), worker, worker):
            wait_until(url, "SELECT count(*) FROM runs WHERE status = 'succeeded'", count, 120)
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(started_at) - %(due)s), "
                "extract(epoch FROM min(queued_at) - %(due)s), "
                "extract(epoch FROM max(queued_at) - %(due)s) FROM runs",
                {"due": due},
            ).fetchone()
        late = lateness_ms(url)
        show(f"burst: {count} due in the same second", percentiles(late))
        assert row is not None
        last, first_queued, last_queued = (float(v) for v in row)
        print(f"{'burst: last one started after':<44} {last:.2f}s", flush=True)
        print(
            f"{'burst: queued (materialised) from/until':<44} "
            f"{first_queued:+.2f}s / {last_queued:+.2f}s of the due time",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=128,
        help="pipelines per worker in the burst (no-op steps: more in flight, larger claims)",
    )
    args = parser.parse_args()
    print(f"pao lateness benchmark, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    if args.idle:
        idle(args.idle)
    if args.burst:
        burst(args.burst, args.concurrency)


if __name__ == "__main__":
    main()
