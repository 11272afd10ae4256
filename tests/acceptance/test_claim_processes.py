"""The claim protocol against real `pao api` processes: a long poll woken by an offer made
on another connection, and an API restart during a long poll that loses no step."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from pao.db import connect
from pao.domain import claims
from tests.acceptance.procs import pao, wait_ready
from tests.acceptance.test_streams import _api, _read_until, frames
from tests.helpers import SEED_TASK, auth, claims_waiting, new_agent

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _offer(db_url: str, run_id: str, step_id: str) -> None:
    async def go() -> None:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                await claims.offer_step(
                    conn,
                    run_id=uuid.UUID(run_id),
                    step_index=0,
                    step_id=step_id,
                    task_type="gpu.render",
                    parameters={"n": 1},
                )
        finally:
            await conn.close()

    asyncio.run(go())


def _claim(http: httpx.Client, base: str, token: str, wait: float) -> list[dict[str, Any]]:
    resp = http.post(
        f"{base}/task-types/gpu.render/claim",
        json={"limit": 1, "wait_seconds": wait},
        headers=auth(token),
    )
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def test_long_poll_across_processes_and_a_restart(db_url: str, tmp_path: Path) -> None:
    admin = new_agent(db_url, ["admin"], name="root")
    worker = new_agent(db_url, ["work:claim"], name="renderer")
    # Heartbeats far apart: a stream learns of progress from its event, not from a heartbeat.
    base, api = _api(db_url, tmp_path, "api1", PAO_STREAM_HEARTBEAT_SECONDS="60")
    try:
        wait_ready(base, api)
        with httpx.Client(timeout=httpx.Timeout(10, read=40)) as http:
            made = http.post(
                f"{base}/task-types",
                json={"name": "gpu.render", "parameters_schema": SCHEMA},
                headers=auth(admin),
            )
            assert made.status_code == 201, made.text
            cli = ("--api-url", base, "--token", admin)
            listed = pao("task-types", "list", *cli, env=dict(os.environ))
            assert listed.returncode == 0, listed.stderr
            assert "gpu.render" in listed.stdout
            shown = pao("task-types", "get", "gpu.render", "--json", *cli, env=dict(os.environ))
            assert json.loads(shown.stdout)["parameters_schema"] == SCHEMA
            refused = pao(
                "task-types",
                "create",
                "log",
                "--parameters-schema",
                "{}",
                *cli,
                env=dict(os.environ),
            )
            assert refused.returncode == 1
            assert "built-in" in refused.stderr
            step = {"id": "render", "uses": "gpu.render", "with": {"n": 1}}
            task = http.post(
                f"{base}/tasks",
                json={**SEED_TASK, "payload": {"pipeline": [step]}},
                headers=auth(admin),
            )
            assert task.status_code == 201, task.text
            run = http.post(f"{base}/tasks/{task.json()['id']}/run_now", headers=auth(admin))
            run_id = run.json()["id"]

            # A long poll, woken by an offer committed on another connection.
            got: list[dict[str, Any]] = []
            answered: list[float] = []

            def poll() -> None:
                got.extend(_claim(http, base, worker, 25))
                answered.append(time.monotonic())

            waiter = threading.Thread(target=poll)
            waiter.start()
            claims_waiting(lambda: http.get(f"{base}/metrics").text)
            offered = time.monotonic()
            _offer(db_url, run_id, "render")
            waiter.join(20)
            assert [g["step_id"] for g in got] == ["render"]
            print(f"woken {1000 * (answered[0] - offered):.0f} ms after the offer")
            assert answered[0] - offered < 1.0
            # Progress reaches the run's log and, live, the run's stream.
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=8)) as watcher,
                watcher.stream("GET", f"{base}/runs/{run_id}/stream", headers=auth(admin)) as resp,
            ):
                assert resp.status_code == 200
                stream = frames(resp)
                _read_until(stream, lambda f: f[0] == "run")  # the run as it is now
                said = http.post(
                    f"{base}/claims/{got[0]['claim_id']}/progress",
                    json={"message": "rendering", "percent": 40},
                    headers=auth(worker),
                )
                assert said.status_code == 200, said.text
                _read_until(stream, lambda f: f[0] == "log" and f[1]["message"] == "40% rendering")
            logs = http.get(f"{base}/runs/{run_id}/logs", headers=auth(admin)).json()["items"]
            assert "40% rendering" in [line["message"] for line in logs]
            done = http.post(
                f"{base}/claims/{got[0]['claim_id']}/complete",
                json={"output": {"ok": True}},
                headers=auth(worker),
            )
            assert done.status_code == 200, done.text

            # The API restarts while a claimer waits; a step offered meanwhile is not lost.
            outcome: list[Any] = []

            def poll_through_restart() -> None:
                try:
                    outcome.append(_claim(http, base, worker, 25))
                except httpx.HTTPError as exc:
                    outcome.append(exc)

            waiter = threading.Thread(target=poll_through_restart)
            waiter.start()
            claims_waiting(lambda: http.get(f"{base}/metrics").text)
            api.stop()
            waiter.join(20)
            assert outcome
            assert outcome[0] == [] or isinstance(outcome[0], httpx.HTTPError)
            _offer(db_url, run_id, "render-again")
            base, api = _api(db_url, tmp_path, "api2")
            wait_ready(base, api)
            # The client retries against the new process and claims the step.
            items = _claim(http, base, worker, 5)
            assert [i["step_id"] for i in items] == ["render-again"]
    finally:
        api.kill()
