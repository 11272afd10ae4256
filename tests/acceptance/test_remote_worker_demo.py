"""ops/remote-worker-demo against a real `pao api`: it registers demo.uppercase, completes
an offered step with progress, and on SIGTERM hands back the step it holds."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from pao.db import connect
from pao.domain import claims
from tests.acceptance.procs import ROOT, Process, until_logged, until_running, wait_ready
from tests.acceptance.running import api_process, finished_run, worker_process
from tests.acceptance.test_streams import _api
from tests.helpers import SEED_TASK, auth, new_agent

DEMO = ROOT / "ops" / "remote-worker-demo" / "uppercase.py"


def _offer(db_url: str, run_id: str, step_id: str, text: str) -> None:
    async def go() -> None:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                await claims.offer_step(
                    conn,
                    run_id=uuid.UUID(run_id),
                    step_index=1,
                    step_id=step_id,
                    task_type="demo.uppercase",
                    parameters={"text": text},
                )
        finally:
            await conn.close()

    asyncio.run(go())


def _step(db: psycopg.Connection[Any], step_id: str) -> tuple[Any, ...] | None:
    row = db.execute(
        "SELECT state, deliveries, output FROM remote_steps WHERE step_id = %s", (step_id,)
    ).fetchone()
    return tuple(row) if row else None


def test_demo_registers_completes_and_hands_back(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    admin = new_agent(db_url, ["admin"], name="root")
    worker = new_agent(db_url, ["work:claim"], name="uppercaser")
    base, api = _api(db_url, tmp_path, "api")
    demos: list[Process] = []

    def demo(name: str, *args: str) -> Process:
        env = {**os.environ, "PAO_API_URL": base, "PAO_TOKEN": worker, "PAO_ADMIN_TOKEN": admin}
        proc = Process([sys.executable, str(DEMO), *args], env, tmp_path / f"{name}.log")
        demos.append(proc)
        return proc

    try:
        wait_ready(base, api)
        first = demo("demo1", "--delay", "0.1")
        until_logged(first, "claiming steps of demo.uppercase")
        assert "registered task type demo.uppercase" in first.output()
        with httpx.Client(base_url=base, headers=auth(admin), timeout=10) as http:
            made = http.get("/task-types/demo.uppercase")
            assert made.status_code == 200, made.text
            assert made.json()["output_schema"]["required"] == ["text"]
            pipeline = [
                {"id": "hello", "uses": "log", "with": {"message": "hello"}},
                {"id": "shout", "uses": "demo.uppercase", "with": {"text": "good morning"}},
            ]
            task = http.post("/tasks", json={**SEED_TASK, "payload": {"pipeline": pipeline}})
            assert task.status_code == 201, task.text
            run = http.post(f"/tasks/{task.json()['id']}/run_now")
            run_id = run.json()["id"]

        _offer(db_url, run_id, "shout", "good morning")
        until_running(
            [api, first],
            lambda: _step(db, "shout") == ("succeeded", 1, {"text": "GOOD MORNING"}),
            "the demo to complete the step",
        )
        logs = db.execute(
            "SELECT message FROM run_logs WHERE step_id = 'shout' ORDER BY id"
        ).fetchall()
        assert [m for (m,) in logs] == ["0% upper-casing 12 characters", "100% done"]
        assert first.stop() == 0
        assert "stopped: 1 completed, 0 failed, 0 handed back, 0 lost" in first.output()

        # A slow demo is stopped mid-step: it hands the step back, spending no attempt.
        slow = demo("demo2", "--delay", "60", "--grace", "0.2")
        until_logged(slow, "task type demo.uppercase exists")
        _offer(db_url, run_id, "shout-again", "again")
        until_running([api, slow], lambda: _step(db, "shout-again") == ("claimed", 1, None), "")
        assert slow.stop() == 0
        assert _step(db, "shout-again") == ("queued", 1, None)
        assert "stopped: 0 completed, 0 failed, 1 handed back, 0 lost" in slow.output()
    finally:
        for proc in demos:
            proc.kill()
        api.kill()


def test_a_pipeline_runs_through_the_demo(db_url: str, tmp_path: Path) -> None:
    """With pao api, pao worker and the demo: a built-in step, the remote step, and a
    built-in step whose input is templated from the remote step's output, in one run."""
    admin = new_agent(db_url, ["admin"], name="root")
    claimer = new_agent(db_url, ["work:claim"], name="uppercaser")
    with api_process(db_url, tmp_path) as base, worker_process(db_url, tmp_path):
        env = {**os.environ, "PAO_API_URL": base, "PAO_TOKEN": claimer, "PAO_ADMIN_TOKEN": admin}
        demo = Process([sys.executable, str(DEMO), "--delay", "0"], env, tmp_path / "demo.log")
        try:
            until_logged(demo, "claiming steps of demo.uppercase")
            pipeline = [
                {"id": "greet", "uses": "log", "with": {"message": "good morning"}},
                {
                    "id": "shout",
                    "uses": "demo.uppercase",
                    "with": {"text": "good morning"},
                },
                {"id": "say", "uses": "log", "with": {"message": "${steps.shout.text}!"}},
            ]
            with httpx.Client(base_url=base, headers=auth(admin), timeout=10) as http:
                task = http.post("/tasks", json={**SEED_TASK, "payload": {"pipeline": pipeline}})
                assert task.status_code == 201, task.text
                run_id = http.post(f"/tasks/{task.json()['id']}/run_now").json()["id"]
            run = until_running(
                [demo],
                lambda: _ended(finished_run(base, admin, run_id)),
                "the run to end",
            )
            assert run["status"] == "succeeded", (run["error"], run["steps"])
            steps = {s["id"]: s for s in run["steps"]}
            assert steps["shout"]["output"] == {"text": "GOOD MORNING"}
            assert steps["say"]["status"] == "succeeded"
            logs = httpx.get(f"{base}/runs/{run_id}/logs", headers=auth(admin), timeout=10)
            messages = [line["message"] for line in logs.json()["items"]]
            assert "GOOD MORNING!" in messages, messages
        finally:
            demo.kill()


def _ended(run: dict[str, Any]) -> dict[str, Any] | None:
    return None if run["status"] in ("queued", "running", "waiting") else run
