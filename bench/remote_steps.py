"""Remote steps over HTTP: drain rate, long-poll wake latency, and what waiting polls cost.

    .venv/bin/python -m bench.remote_steps [--steps 20000] [--batch 100] [--polls 500]

A real `pao api` process on a throwaway embedded PostgreSQL (or BENCH_DATABASE_URL).
1. Drain: N steps of one run are offered through the store (as the worker will), then
   1 and then 4 client processes claim them over HTTP, `--batch` at a time, and complete
   each batch in one call (POST /claims/complete; a handler that does nothing): steps/s,
   and the latency of the claim and complete calls per step. Target: >= 2,000 steps/s with
   batched claims and completes.
2. Wake: a client long-polls an empty type; one step is offered and committed; the time
   from the commit to the claim's answer, p50/p99 over 50 offers. Target: p99 <= 20 ms.
3. Memory: the API's RSS with `--polls` long polls waiting (wait_seconds 30), against
   its RSS idle. Target: < 50 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.api_throughput import free_port, wait_up
from bench.common import database, percentiles, processes, show
from pao.db import connect
from pao.store import remote_steps
from pao.tokens import new_token

TYPE = "bench.noop"
WAKE_TYPE = "bench.wake"
IDLE_TYPE = "bench.idle"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}


def setup(base: str, token: str) -> str:
    """The task types, and a queued run whose steps the benchmark offers."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        for name in (TYPE, WAKE_TYPE, IDLE_TYPE):
            made = http.post(
                "/task-types", json={"name": name, "parameters_schema": SCHEMA, "lease_seconds": 60}
            )
            made.raise_for_status()
        step = {"id": "s", "uses": TYPE, "with": {"n": 1}}
        task = http.post(
            "/tasks",
            json={
                "title": "remote bench",
                "schedule_kind": "event",
                "schedule_expr": "bench.remote",
                "payload": {"pipeline": [step]},
            },
        )
        task.raise_for_status()
        run = http.post(f"/tasks/{task.json()['id']}/run_now")
        run.raise_for_status()
        return str(run.json()["id"])


async def offer(url: str, run_id: str, task_type: str, ids: range, prefix: str) -> float:
    """Offer steps in one transaction; the monotonic time just after its commit."""
    conn = await connect(url)
    try:
        async with conn.transaction():
            for i in ids:
                await remote_steps.offer_remote_step(
                    conn,
                    run_id=uuid.UUID(run_id),
                    step_index=i,
                    step_id=f"{prefix}{i}",
                    task_type=task_type,
                    parameters={"n": i},
                    idempotency_key=f"{run_id}:{prefix}{i}",
                )
        return time.monotonic()
    finally:
        await conn.close()


def drain_child(base: str, token: str, batch: int, lanes: int, out: Any, go_: Any) -> None:
    """One client process: `lanes` claim loops until a claim comes back empty. It says it
    is ready, then starts when `go_` is set, so process start-up is not timed."""

    async def go() -> tuple[int, list[float], list[float]]:
        claims: list[float] = []
        completes: list[float] = []
        done = 0
        headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=lanes * 8)
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=60, limits=limits
        ) as http:

            async def complete(items: list[dict[str, Any]]) -> None:
                nonlocal done
                t = time.monotonic()
                body = {
                    "items": [{"claim_id": i["claim_id"], "output": {"ok": True}} for i in items]
                }
                resp = await http.post("/claims/complete", json=body)
                resp.raise_for_status()
                outcomes = resp.json()["items"]
                assert all(o["status"] == 200 for o in outcomes), outcomes
                completes.append((time.monotonic() - t) / len(items))
                done += len(items)

            async def lane() -> None:
                while True:
                    t = time.monotonic()
                    resp = await http.post(
                        f"/task-types/{TYPE}/claim", json={"limit": batch, "wait_seconds": 0}
                    )
                    resp.raise_for_status()
                    items = resp.json()["items"]
                    if not items:
                        return
                    claims.append((time.monotonic() - t) / len(items))
                    await complete(items)

            (await http.get("/health/live")).raise_for_status()  # connected, warm
            out.put("ready")
            await asyncio.to_thread(go_.wait)
            await asyncio.gather(*(lane() for _ in range(lanes)))
        return done, claims, completes

    out.put(asyncio.run(go()))


def drain(url: str, base: str, token: str, run_id: str, n: int, procs: int, batch: int) -> None:
    prefix = f"p{procs}-"
    asyncio.run(offer(url, run_id, TYPE, range(n), prefix))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    go_ = ctx.Event()
    children = [
        ctx.Process(target=drain_child, args=(base, token, batch, 2, out, go_))
        for _ in range(procs)
    ]
    for c in children:
        c.start()
    for _ in children:
        assert out.get(timeout=120) == "ready"
    start = time.monotonic()
    go_.set()
    results = [out.get(timeout=600) for _ in children]
    elapsed = time.monotonic() - start
    for c in children:
        c.join()
    done = sum(r[0] for r in results)
    claims = [x * 1000 for r in results for x in r[1]]
    completes = [x * 1000 for r in results for x in r[2]]
    print(
        f"drain, {procs} client process(es), batch {batch}: {done} steps in {elapsed:.2f}s = "
        f"{done / elapsed:.0f} steps/s (target >= 2,000)",
        flush=True,
    )
    show("  claim call, per step claimed", percentiles(claims))
    show("  complete call (batched), per step", percentiles(completes))


async def wake(url: str, base: str, token: str, run_id: str, samples: int) -> None:
    lat: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        for i in range(samples):
            poll = asyncio.create_task(
                http.post(f"/task-types/{WAKE_TYPE}/claim", json={"limit": 1, "wait_seconds": 10})
            )
            await asyncio.sleep(0.15)  # the poll is waiting (its first look found nothing)
            committed = await offer(url, run_id, WAKE_TYPE, range(i, i + 1), "w")
            resp = await poll
            answered = time.monotonic()
            resp.raise_for_status()
            [item] = resp.json()["items"]
            lat.append((answered - committed) * 1000)
            done = await http.post(
                f"/claims/{item['claim_id']}/complete", json={"output": {"ok": True}}
            )
            done.raise_for_status()
    show("wake: offer commit -> claim answer", percentiles(lat))
    print("  (target: p99 <= 20 ms)", flush=True)


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children."""
    total = 0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


async def waiting_polls(base: str, token: str, pid: int, count: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    idle = rss_kib(pid)
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
        polls = [
            asyncio.create_task(
                http.post(f"/task-types/{IDLE_TYPE}/claim", json={"limit": 1, "wait_seconds": 30})
            )
            for _ in range(count)
        ]
        # Let every request reach the API and settle into its wait.
        peak = idle
        for _ in range(40):
            await asyncio.sleep(0.25)
            peak = max(peak, rss_kib(pid))
        held = rss_kib(pid)
        for p in polls:
            p.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    print(
        f"{count} waiting long polls: API RSS {idle / 1024:.1f} MB idle -> {held / 1024:.1f} MB "
        f"(peak {peak / 1024:.1f} MB): +{(held - idle) / 1024:.1f} MB (target < 50 MB)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="at most 100 (one complete call)")
    parser.add_argument("--wake-samples", type=int, default=50)
    parser.add_argument("--polls", type=int, default=500)
    args = parser.parse_args()
    print(
        f"pao remote steps, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"one API process",
        flush=True,
    )
    with database() as url:
        port = free_port()
        token = new_token()
        env = {
            "PAO_PORT": str(port),
            "PAO_ADMIN_TOKEN": token,
            "PAO_RATE_LIMIT_PER_MINUTE": "10000000",
        }
        with processes(url, ("api", env)) as (api,):
            base = f"http://127.0.0.1:{port}"
            wait_up(f"{base}/health/ready")
            run_id = setup(base, token)
            for procs in (1, 4):
                drain(url, base, token, run_id, args.steps, procs, args.batch)
            asyncio.run(wake(url, base, token, run_id, args.wake_samples))
            asyncio.run(waiting_polls(base, token, api.pid, args.polls))


if __name__ == "__main__":
    main()
