"""`pao claims work --type NAME -- COMMAND` against a real `pao api`: the command gets each
step's parameters on stdin and its stdout becomes the output; its exit status fails the
step (65: for good); SIGTERM stops the CLI cleanly."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from pao.db import connect
from pao.domain import claims
from tests.acceptance.procs import Process, until_logged, until_running, wait_ready
from tests.acceptance.test_streams import _api
from tests.helpers import SEED_TASK, auth, new_agent

SCRIPT = """
import json, os, sys
text = json.load(sys.stdin)["text"]
if text == "bad":
    print("no such text", file=sys.stderr)
    sys.exit(65)
if text == "boom":
    sys.exit(3)
print(json.dumps({"text": text.upper(), "step": os.environ["PAO_STEP_ID"],
                  "token": os.environ.get("PAO_TOKEN")}))
"""
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


async def _offer(db_url: str, run_id: str, texts: dict[str, str]) -> None:
    conn = await connect(db_url)
    try:
        for index, (step_id, text) in enumerate(texts.items()):
            async with conn.transaction():
                await claims.offer_step(
                    conn,
                    run_id=uuid.UUID(run_id),
                    step_index=index,
                    step_id=step_id,
                    task_type="cli.shout",
                    parameters={"text": text},
                )
    finally:
        await conn.close()


def _ended(db: psycopg.Connection[Any]) -> dict[str, tuple[Any, ...]] | None:
    rows = db.execute(
        "SELECT step_id, state, output, retryable, error FROM remote_steps"
    ).fetchall()
    found = {r[0]: tuple(r[1:]) for r in rows}
    done = len(found) == 3 and all(v[0] in ("succeeded", "failed") for v in found.values())
    return found if done else None


def test_claims_work_runs_a_command_per_step(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    admin = new_agent(db_url, ["admin"], name="root")
    claimer = new_agent(db_url, ["work:claim"], name="shouter")
    base, api = _api(db_url, tmp_path, "api")
    cli: Process | None = None
    try:
        wait_ready(base, api)
        with httpx.Client(base_url=base, headers=auth(admin), timeout=10) as http:
            made = http.post("/task-types", json={"name": "cli.shout", "parameters_schema": SCHEMA})
            assert made.status_code == 201, made.text
            step = {"id": "s", "uses": "cli.shout", "with": {"text": "x"}}
            task = http.post("/tasks", json={**SEED_TASK, "payload": {"pipeline": [step]}})
            assert task.status_code == 201, task.text
            run_id = http.post(f"/tasks/{task.json()['id']}/run_now").json()["id"]
        argv = [sys.executable, "-m", "pao", "claims", "work", "--type", "cli.shout"]
        argv += ["--api-url", base, "--token", claimer, "--concurrency", "2", "--"]
        argv += [sys.executable, "-c", SCRIPT]
        cli = Process(argv, {"PATH": "/usr/bin:/bin"}, tmp_path / "cli.log")
        until_logged(cli, "claiming steps of cli.shout")
        asyncio.run(_offer(db_url, run_id, {"a": "hello", "b": "bad", "c": "boom"}))
        found = until_running([api, cli], lambda: _ended(db), "the three steps to end")
        assert found["a"][:2] == ("succeeded", {"text": "HELLO", "step": "a", "token": None})
        assert found["b"][0::2] == ("failed", False)
        assert "exited with status 65: no such text" in found["b"][3]
        assert found["c"][0::2] == ("failed", True)
        assert "exited with status 3" in found["c"][3]
        assert cli.stop() == 0
        assert "stopped: 1 completed, 2 failed, 0 handed back, 0 lost" in cli.output()
    finally:
        if cli is not None:
            cli.kill()
        api.kill()
