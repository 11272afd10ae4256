"""pao.client.RemoteWorker against a real API served over HTTP (uvicorn in a thread): it
claims, heartbeats a handler slower than the lease, reports progress, completes or fails,
stops a handler whose claim is lost, and hands held steps back when stopped."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from pao.client import PaoClient, PermanentError, RemoteWorker, StepContext, StepResult
from pao.db import Conn, connect
from pao.store import remote_steps
from tests.acceptance.procs import free_port
from tests.helpers import SEED_TASK, auth, until, until_async

TYPE = "test.work"
SCHEMA = {"type": "object", "properties": {"mode": {"type": "string"}}}


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    """The integration app, served over real HTTP for the async client."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started, "the API to listen")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def run_id(base_url: str, make_token: Callable[..., str]) -> str:
    """A queued run of a task using TYPE (lease 1 s); its steps are offered by the tests."""
    admin = make_token("admin", name="root")
    with httpx.Client(base_url=base_url, headers=auth(admin)) as http:
        made = http.post(
            "/task-types", json={"name": TYPE, "parameters_schema": SCHEMA, "lease_seconds": 1}
        )
        assert made.status_code == 201, made.text
        step = {"id": "s0", "uses": TYPE, "with": {"mode": "ok"}}
        task = http.post("/tasks", json={**SEED_TASK, "payload": {"pipeline": [step]}})
        assert task.status_code == 201, task.text
        run = http.post(f"/tasks/{task.json()['id']}/run_now")
        assert run.status_code == 202, run.text
        return str(run.json()["id"])


@pytest.fixture
def worker_token(make_token: Callable[..., str]) -> str:
    return make_token("work:claim", name="remote")


async def offer(db_url: str, run_id: str, **steps: dict[str, Any]) -> None:
    """Offer steps (step id → parameters) of the run, committed, as the worker will."""
    conn = await connect(db_url)
    try:
        for index, (step_id, params) in enumerate(steps.items()):
            async with conn.transaction():
                await remote_steps.offer_remote_step(
                    conn,
                    run_id=uuid.UUID(run_id),
                    step_index=index,
                    step_id=step_id,
                    task_type=TYPE,
                    parameters=params,
                    idempotency_key=f"{run_id}:{step_id}",
                )
    finally:
        await conn.close()


async def steps(conn: Conn) -> dict[str, dict[str, Any]]:
    cur = await conn.execute(
        "SELECT step_id, state, deliveries, output, cost, error, retryable FROM remote_steps"
    )
    return {row["step_id"]: dict(row) for row in await cur.fetchall()}


def scenario(db_url: str, go: Callable[[Conn], Awaitable[None]]) -> None:
    async def main() -> None:
        conn = await connect(db_url, autocommit=True)
        try:
            await go(conn)
        finally:
            await conn.close()

    asyncio.run(main())


def test_a_slow_handler_keeps_its_claim_reports_progress_and_completes(
    base_url: str, db_url: str, run_id: str, worker_token: str
) -> None:
    async def handler(ctx: StepContext) -> dict[str, Any]:
        for percent in (25, 50, 75):
            ctx.progress("working", percent)
            await asyncio.sleep(0.8)  # 2.4 s in all, with a 1 s lease
        return {"done": ctx.parameters["mode"], "key": ctx.idempotency_key}

    async def go(conn: Conn) -> None:
        async with PaoClient.connect(base_url, worker_token) as client:
            worker = RemoteWorker(client, TYPE, handler, wait_seconds=5)
            running = asyncio.create_task(worker.run())
            await offer(db_url, run_id, slow={"mode": "slow"})
            found = await until_async(
                lambda: _state_is(conn, "slow", "succeeded"), "the step to succeed"
            )
            assert found["deliveries"] == 1  # never offered again: the heartbeats held it
            assert found["output"] == {"done": "slow", "key": f"{run_id}:slow"}
            cur = await conn.execute(
                "SELECT message FROM run_logs WHERE step_id = 'slow' ORDER BY id"
            )
            assert [r["message"] for r in await cur.fetchall()] == [
                "25% working",
                "50% working",
                "75% working",
            ]
            worker.stop()
            await running
            assert (worker.stats.claimed, worker.stats.completed) == (1, 1)

    scenario(db_url, go)


async def _state_is(conn: Conn, step_id: str, state: str) -> dict[str, Any] | None:
    found = (await steps(conn)).get(step_id)
    return found if found and found["state"] == state else None


def test_sync_handler_cost_and_failures(
    base_url: str, db_url: str, run_id: str, worker_token: str
) -> None:
    def handler(ctx: StepContext) -> StepResult:
        mode = ctx.parameters["mode"]
        if mode == "boom":
            raise RuntimeError("the GPU fell over")
        if mode == "bad":
            raise PermanentError("no such file")
        return StepResult({"mode": mode}, cost=0.25)

    async def go(conn: Conn) -> None:
        async with PaoClient.connect(base_url, worker_token) as client:
            worker = RemoteWorker(client, TYPE, handler, concurrency=3, wait_seconds=5)
            running = asyncio.create_task(worker.run())
            await offer(db_url, run_id, a={"mode": "ok"}, b={"mode": "boom"}, c={"mode": "bad"})

            async def ended() -> dict[str, dict[str, Any]] | None:
                found = await steps(conn)
                done = all(s["state"] in ("succeeded", "failed") for s in found.values())
                return found if len(found) == 3 and done else None

            found = await until_async(ended, "the three steps to end")
            assert found["a"]["state"] == "succeeded"
            assert found["a"]["output"] == {"mode": "ok"}
            assert float(found["a"]["cost"]) == 0.25
            assert (found["b"]["state"], found["b"]["retryable"]) == ("failed", True)
            assert found["b"]["error"] == "RuntimeError: the GPU fell over"
            assert (found["c"]["state"], found["c"]["retryable"]) == ("failed", False)
            assert found["c"]["error"] == "PermanentError: no such file"
            worker.stop()
            await running
            assert (worker.stats.completed, worker.stats.failed) == (1, 2)

    scenario(db_url, go)


def test_a_lost_claim_stops_the_handler(
    base_url: str, db_url: str, run_id: str, worker_token: str, make_token: Callable[..., str]
) -> None:
    admin = make_token("admin", name="canceller")
    started = asyncio.Event()
    cancelled: list[str] = []

    async def handler(ctx: StepContext) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()  # until interrupted
        except asyncio.CancelledError:
            cancelled.append(ctx.step_id)
            raise
        return {}

    async def go(conn: Conn) -> None:
        async with PaoClient.connect(base_url, worker_token) as client:
            worker = RemoteWorker(client, TYPE, handler, wait_seconds=5)
            running = asyncio.create_task(worker.run())
            await offer(db_url, run_id, forever={"mode": "x"})
            await asyncio.wait_for(started.wait(), 30)
            # The run is cancelled: the next heartbeat is answered 409.
            async with httpx.AsyncClient(base_url=base_url, headers=auth(admin)) as http:
                resp = await http.post(f"/runs/{run_id}/cancel")
                assert resp.status_code in (200, 202), resp.text
            await until_async(lambda: _true(cancelled), "the handler to be cancelled")
            await until_async(lambda: _true(worker.stats.lost), "the claim to count as lost")
            assert worker.stats.completed == worker.stats.failed == worker.stats.released == 0
            worker.stop()
            await running

    scenario(db_url, go)


def test_a_sync_handler_sees_ctx_lost(
    base_url: str, db_url: str, run_id: str, worker_token: str, make_token: Callable[..., str]
) -> None:
    admin = make_token("admin", name="canceller")
    seen = threading.Event()
    started = threading.Event()

    def handler(ctx: StepContext) -> dict[str, Any]:
        started.set()
        while not ctx.lost:
            seen.wait(0.05)
        seen.set()
        return {"ignored": True}

    async def go(conn: Conn) -> None:
        async with PaoClient.connect(base_url, worker_token) as client:
            worker = RemoteWorker(client, TYPE, handler, wait_seconds=5)
            running = asyncio.create_task(worker.run())
            await offer(db_url, run_id, chunked={"mode": "x"})
            await until_async(lambda: _true(started.is_set()), "the handler to start")
            async with httpx.AsyncClient(base_url=base_url, headers=auth(admin)) as http:
                assert (await http.post(f"/runs/{run_id}/cancel")).status_code in (200, 202)
            await until_async(lambda: _true(seen.is_set()), "the handler to see ctx.lost")
            await until_async(lambda: _true(worker.stats.lost), "the claim to count as lost")
            assert (await steps(conn))["chunked"]["output"] is None  # its answer was dropped
            worker.stop()
            await running

    scenario(db_url, go)


async def _true(value: Any) -> Any:
    return value


def test_stop_hands_held_steps_back(
    base_url: str, db_url: str, run_id: str, worker_token: str
) -> None:
    started: list[str] = []

    async def handler(ctx: StepContext) -> dict[str, Any]:
        started.append(ctx.step_id)
        await asyncio.Event().wait()
        return {}

    async def go(conn: Conn) -> None:
        async with PaoClient.connect(base_url, worker_token) as client:
            worker = RemoteWorker(client, TYPE, handler, concurrency=2, wait_seconds=5)
            running = asyncio.create_task(worker.run())
            await offer(db_url, run_id, one={"mode": "1"}, two={"mode": "2"})
            await until_async(lambda: _true(len(started) == 2), "both handlers to start")
            worker.stop()
            await asyncio.wait_for(running, 30)
            assert worker.stats.released == 2
            found = await steps(conn)
            assert {k: (v["state"], v["deliveries"]) for k, v in found.items()} == {
                "one": ("queued", 1),
                "two": ("queued", 1),
            }
            # The next claimer gets them at once, not after the lease.
            again = await client.claim(TYPE, limit=5)
            assert sorted(i["step_id"] for i in again["items"]) == ["one", "two"]

    scenario(db_url, go)


def test_complete_many_reports_each_item(
    base_url: str, db_url: str, run_id: str, worker_token: str
) -> None:
    async def go(conn: Conn) -> None:
        # A lease longer than the three calls below can take on a busy machine: only the
        # failed claim is to be lost.
        await conn.execute("UPDATE task_types SET lease_seconds = 60 WHERE name = %s", (TYPE,))
        await offer(db_url, run_id, a={"mode": "ok"}, b={"mode": "ok"})
        async with PaoClient.connect(base_url, worker_token) as client:
            a, b = (await client.claim(TYPE, limit=2))["items"]
            await client.fail(b["claim_id"], "gave up")
            outcomes = await client.complete_many(
                [
                    {"claim_id": a["claim_id"], "output": {"done": 1}, "cost": 0.5},
                    {"claim_id": b["claim_id"], "output": {"done": 2}},
                ]
            )
        assert [(o["claim_id"], o["status"]) for o in outcomes] == [
            (a["claim_id"], 200),
            (b["claim_id"], 409),
        ]
        assert outcomes[1]["type"] == "urn:pao:problem:claim-lost"
        found = await steps(conn)
        assert (found[a["step_id"]]["state"], found[a["step_id"]]["output"]) == (
            "succeeded",
            {"done": 1},
        )
        assert found[b["step_id"]]["state"] == "failed"

    scenario(db_url, go)
