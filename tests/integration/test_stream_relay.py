"""What a stream sends for the events it hears, against a real database: never twice, never
backwards, the database read where notifications fall short."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from api.streams import Relay, Subscriber
from pao.db import make_pool
from tests.helpers import SEED_TASK, auth


def _parse(frames: list[str]) -> list[tuple[str, Any]]:
    out = []
    for text in frames:
        head, data = text.strip().split("\n")
        out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_relay_dedupes_reads_what_it_must_and_starts_over_after_a_hand_back(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
    run_id, task_id = run["id"], task["id"]

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"e": kind, "run": run_id, "task": task_id, **fields}

    step = {"id": "hello", "uses": "log", "status": "running"}

    async def go() -> list[list[tuple[str, Any]]]:
        pool = make_pool(db_url, min_size=1, max_size=2)
        await pool.open(wait=True)
        try:
            relay = Relay(pool, None, Subscriber(uuid.UUID(task_id), None), heartbeat=1)
            seen = [_parse(await relay.handle([event("state", status="running", a=1)]))]
            seen.append(
                _parse(
                    await relay.handle(
                        [
                            event("step", i=0, step=step),
                            event("step", i=0, step=step),  # heard twice: told once
                            event("state", status="running", a=1),
                        ]
                    )
                )
            )
            db.execute(
                "INSERT INTO run_logs (run_id, message) VALUES (%s, 'one'), (%s, 'two')",
                (run_id, run_id),
            )
            seen.append(_parse(await relay.handle([event("log", id=0), event("log", id=0)])))
            # Handed back at shutdown: the run starts over.
            seen.append(_parse(await relay.handle([event("state", status="queued", a=1)])))
            db.execute(
                "UPDATE runs SET status = 'succeeded', started_at = now(), finished_at = now(), "
                "steps = %s WHERE id = %s",
                (json.dumps([{**step, "status": "succeeded", "output": {"ok": 1}}]), run_id),
            )
            # A final state is read from the database, every output included; after it, nothing.
            seen.append(_parse(await relay.handle([event("state", status="succeeded", a=1)])))
            seen.append(_parse(await relay.handle([event("step", i=0, step=step)])))
            return seen
        finally:
            await pool.close()

    first, steps, logs, reset, final, after = asyncio.run(go())
    # First sight: the run as the database has it, then what the (newer) event says.
    assert [(k, d["status"]) for k, d in first] == [("run", "queued"), ("state", "running")]
    assert [(k, d["step"]["status"]) for k, d in steps] == [("step", "running")]
    assert [(k, d["message"]) for k, d in logs] == [("log", "one"), ("log", "two")]
    assert [(k, d["status"]) for k, d in reset] == [("run", "queued")]
    assert [k for k, _ in final] == ["step", "state", "run"]
    assert final[0][1]["step"]["output"] == {"ok": 1}
    assert final[2][1]["status"] == "succeeded"
    assert after == []
