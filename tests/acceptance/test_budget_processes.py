"""Budgets under real concurrency: two `pao worker` processes charging one agent's budget."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import pao_process
from tests.helpers import auth, create_task, run_now, until

RUNS = 20
ROOM = 7


def test_twenty_runs_against_a_budget_for_seven_start_exactly_seven_paid_steps(
    client: TestClient,
    writer_token: str,
    admin_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """The runs are queued while the agent has no budget (admission reserves nothing), then
    the budget is set: what is tested is the charge before each paid step, made by two
    workers at once (each holds half the runs). Each paid step writes one log line, so the
    lines count the starts."""
    task_id = create_task(
        client,
        writer_token,
        # Holds each worker's slots long enough for the other to claim the rest: the paid
        # steps of both workers' runs then start together.
        {"id": "hold", "uses": "sleep", "with": {"seconds": 2}},
        {"id": "paid", "uses": "log", "with": {"message": "spent one"}},
        max_retries=0,
    )
    for _ in range(RUNS):
        run_now(client, writer_token, task_id)
    writer = db.execute("SELECT id FROM agents WHERE name = 'writer'").fetchone()
    assert writer is not None
    resp = client.put(
        f"/agents/{writer[0]}", json={"budget_per_day": ROOM}, headers=auth(admin_token)
    )
    assert resp.status_code == 200, resp.text
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_TOOL_COSTS": "log=1",
        "PAO_WORKER_CONCURRENCY": str(RUNS // 2),
    }
    with (
        pao_process("worker", env, tmp_path / "a.log"),
        pao_process("worker", env, tmp_path / "b.log"),
    ):
        until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed')"
                ).fetchone()
                == (RUNS,)
            ),
            "every run to end",
            60,
        )
    statuses = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY 1").fetchall())
    assert statuses == {"succeeded": ROOM, "failed": RUNS - ROOM}
    assert db.execute("SELECT count(*) FROM run_logs").fetchone() == (ROOM,)
    errors = db.execute("SELECT error FROM runs WHERE status = 'failed'").fetchall()
    assert all(e.startswith("budget_exceeded: step paid") for (e,) in errors), errors
    assert db.execute("SELECT sum(spent) FROM agent_spending WHERE period = 'day'").fetchone() == (
        ROOM,
    )
    assert db.execute("SELECT sum(cost) FROM runs").fetchone() == (ROOM,)
    # Both workers took part.
    workers = db.execute("SELECT count(DISTINCT worker_id) FROM runs").fetchone()
    assert workers == (2,)
    assert_work_consistent(db)
