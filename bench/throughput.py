"""Worker throughput and pickup latency, on real processes.

    .venv/bin/python -m bench.throughput [--jobs 20000] [--pickups 200]

Throughput: 20,000 queued runs of a one-step no-op pipeline (`sleep 0`),
recorded in `runs` as in production, drained by 1 and then 2 worker
processes; runs per second. Pickup: `run_now` through the HTTP API with an
idle worker, to the run's start; p50/p95/p99.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import httpx
import psycopg

from bench.common import agent_id, database, percentiles, processes, show, wait_until
from bench.lateness import NOOP
from pao.tokens import new_token


def queue_jobs(url: str, owner: str, count: int) -> None:
    """`count` queued occurrences of one no-op task, with their runs, as run_now makes them."""
    with psycopg.connect(url) as conn:
        task = conn.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
            "payload) VALUES (%s, 'noop', 'event', 'bench.noop', 'UTC', %s::jsonb) RETURNING id",
            (owner, NOOP),
        ).fetchone()
        assert task is not None
        conn.execute(
            "WITH work AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason) "
            "SELECT %s, now() + i * interval '1 microsecond', now(), 'run_now' "
            "FROM generate_series(1, %s) i RETURNING id, task_id, scheduled_for) "
            "INSERT INTO runs (due_work_id, task_id, scheduled_for) "
            "SELECT id, task_id, scheduled_for FROM work",
            (task[0], count),
        )


def drain(count: int, workers: int, concurrency: int = 32) -> float:
    with database() as url:
        queue_jobs(url, agent_id(url), count)
        spec = ("worker", {"PAO_WORKER_CONCURRENCY": str(concurrency)})
        with processes(url, *([spec] * workers)):
            took = wait_until(
                url, "SELECT count(*) FROM runs WHERE status = 'succeeded'", count, 600
            )
        return count / took


def pickup(count: int) -> None:
    with database() as url:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        token = new_token()
        env = {
            "PAO_PORT": str(port),
            "PAO_ADMIN_TOKEN": token,
            "PAO_RATE_LIMIT_PER_MINUTE": "1000000",
        }
        with processes(url, ("api", env), ("worker", {})):
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    if httpx.get(f"{base}/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            headers = {"Authorization": f"Bearer {token}"}
            task = httpx.post(
                f"{base}/tasks",
                headers=headers,
                json={
                    "title": "pickup",
                    "schedule_kind": "event",
                    "schedule_expr": "bench.pickup",
                    "payload": {
                        "pipeline": [{"id": "noop", "uses": "sleep", "with": {"seconds": 0}}]
                    },
                },
            ).json()
            latencies = []
            # One kept-alive client, as an agent would hold: the figure is ours, not TCP set-up.
            with psycopg.connect(url, autocommit=True) as conn, httpx.Client() as client:
                for _ in range(count):
                    sent = time.time()
                    run = client.post(f"{base}/tasks/{task['id']}/run_now", headers=headers).json()
                    while True:
                        row = conn.execute(
                            "SELECT extract(epoch FROM started_at) FROM runs WHERE id = %s",
                            (run["id"],),
                        ).fetchone()
                        if row and row[0] is not None:
                            latencies.append((float(row[0]) - sent) * 1000)
                            break
                        time.sleep(0.0005)
                    time.sleep(0.02)
        show("pickup: run_now sent -> run started", percentiles(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--pickups", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32, help="pipelines per worker")
    args = parser.parse_args()
    print(f"pao throughput benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    for workers in (1, 2):
        if args.jobs:
            rate = drain(args.jobs, workers, args.concurrency)
            title = f"drain {args.jobs} no-op runs, {workers} worker(s) x {args.concurrency}"
            print(f"{title:<44} {rate:.0f} runs/s", flush=True)
    if args.pickups:
        pickup(args.pickups)


if __name__ == "__main__":
    main()
