"""Worker throughput and pickup latency, on real processes.

    .venv/bin/python -m bench.throughput [--jobs 20000] [--pickups 200] [--watched]

Throughput: 20,000 queued runs of a one-step no-op pipeline (`sleep 0`),
recorded in `runs` as in production, drained by 1 and then 2 worker
processes; runs per second. With `--watched`, the same again while the task
is watched, two ways: "notified", a bare LISTEN connection announcing the
task as an API process would (the cost of the notifications alone), and
"streamed", a client reading the task's live stream from a real API process
(which also spends CPU on these same cores relaying every run). Pickup:
`run_now` through the HTTP API with an idle worker, to the run's start;
p50/p95/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg

from bench.common import agent_id, database, percentiles, processes, show, wait_until
from bench.lateness import NOOP
from pao.tokens import new_token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(f"{base}/health/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the API did not become ready")


def queue_jobs(url: str, owner: str, count: int) -> str:
    """`count` queued occurrences of one no-op task, with their runs, as run_now makes them."""
    with psycopg.connect(url) as conn:
        task = conn.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
            "payload) VALUES (%s, 'noop', 'event', 'bench.noop', 'UTC', %s::jsonb) RETURNING id",
            (owner, NOOP),
        ).fetchone()
        assert task is not None
        conn.execute(
            "WITH work AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason, "
            "run_id) SELECT %s, now() + i * interval '1 microsecond', now(), 'run_now', "
            "pao_uuid_v7() FROM generate_series(1, %s) i "
            "RETURNING id, task_id, scheduled_for, run_id) "
            "INSERT INTO runs (id, due_work_id, task_id, scheduled_for) "
            "SELECT run_id, id, task_id, scheduled_for FROM work",
            (task[0], count),
        )
        return str(task[0])


@contextmanager
def watching(url: str, task_id: str) -> Iterator[list[int]]:
    """A real API process and a client reading the task's stream; yields [frames read]."""
    port, token = free_port(), new_token()
    with processes(url, ("api", {"PAO_PORT": str(port), "PAO_ADMIN_TOKEN": token})):
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        read = [0]
        opened = threading.Event()

        def reader() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.stream(
                "GET", f"{base}/tasks/{task_id}/stream", headers=headers, timeout=None
            ) as resp:
                opened.set()
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        read[0] += 1

        threading.Thread(target=reader, daemon=True).start()
        opened.wait(30)
        time.sleep(1)  # the announcement reaches the workers as they start anyway
        yield read


@contextmanager
def listening(url: str, task_id: str) -> Iterator[list[int]]:
    """A bare listener announcing the task as watched; yields [run events received]."""
    got = [0]
    stop = threading.Event()

    def listen() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN pao_run_events")
            conn.execute("LISTEN pao_streams")
            last = 0.0
            while not stop.is_set():
                if time.monotonic() - last > 4:
                    conn.execute("SELECT pg_notify('pao_streams', %s)", (task_id,))
                    last = time.monotonic()
                for note in conn.notifies(timeout=0.5):
                    if note.channel == "pao_run_events":
                        got[0] += len(json.loads(note.payload))
                    elif note.payload == "?":
                        last = 0.0  # a worker asks: announce again

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(1)
    try:
        yield got
    finally:
        stop.set()
        thread.join(5)


def drain(
    count: int, workers: int, *, watched: str = "", concurrency: int = 32
) -> tuple[float, int]:
    """Runs per second, and how many run events the watcher received."""
    with database() as url:
        task_id = queue_jobs(url, agent_id(url), count)
        spec = ("worker", {"PAO_WORKER_CONCURRENCY": str(concurrency)})
        watcher = {"": _nothing, "notified": listening, "streamed": watching}[watched]
        with watcher(url, task_id) as read:
            with processes(url, *([spec] * workers)):
                took = wait_until(
                    url, "SELECT count(*) FROM runs WHERE status = 'succeeded'", count, 600
                )
            time.sleep(1)
            return count / took, read[0]


@contextmanager
def _nothing(url: str, task_id: str) -> Iterator[list[int]]:
    yield [0]


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
    parser.add_argument(
        "--watched", action="store_true", help="also drain while a client streams the task"
    )
    args = parser.parse_args()
    print(f"pao throughput benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    for watched in ("", "notified", "streamed") if args.watched else ("",):
        for workers in (1, 2):
            if args.jobs:
                rate, read = drain(
                    args.jobs, workers, watched=watched, concurrency=args.concurrency
                )
                title = f"drain {args.jobs} no-op runs, {workers} worker(s) x {args.concurrency}"
                if watched:
                    title += f", {watched}"
                what = "notified events" if watched == "notified" else "SSE events read"
                extra = f" ({read} {what})" if watched else ""
                print(f"{title:<56} {rate:.0f} runs/s{extra}", flush=True)
    if args.pickups:
        pickup(args.pickups)


if __name__ == "__main__":
    main()
