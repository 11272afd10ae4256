"""Real `pao scheduler` and `pao worker` processes serve metrics and write JSON log lines."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi.testclient import TestClient

from tests.acceptance.procs import Process, free_port
from tests.helpers import SEED_TASK, auth, metric, until


def _scrape(port: int) -> str:
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.HTTPError:
        return ""
    return resp.text if resp.status_code == 200 else ""


def test_scheduler_and_worker_metrics_move_and_logs_are_json(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    task = client.post(
        "/tasks",
        json={
            **SEED_TASK,
            "payload": {
                "pipeline": [
                    {"id": "greet", "uses": "log", "with": {"message": "hello metrics"}},
                    {"id": "rest", "uses": "sleep", "with": {"seconds": 0}},
                ]
            },
        },
        headers=auth(writer_token),
    ).json()
    # A worker that died holding an occurrence: its lease ran out long ago.
    db.execute(
        "WITH w AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason, state, "
        "lease_owner, lease_expires_at, run_id) VALUES (%s, now() - interval '1 day', now(), "
        "'run_now', 'running', 'worker-gone', now() - interval '1 minute', pao_uuid_v7()) "
        "RETURNING id, task_id, scheduled_for, run_id) "
        "INSERT INTO runs (id, due_work_id, task_id, scheduled_for, status, started_at) "
        "SELECT run_id, id, task_id, scheduled_for, 'running', now() FROM w",
        (task["id"],),
    )
    sched_port, worker_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_FORMAT": "json",
        "PAO_SCHEDULER_TICK_MS": "200",
        "PAO_RETRY_BASE_SECONDS": "0",
    }
    scheduler = Process(
        [sys.executable, "-m", "pao", "scheduler"],
        {**env, "PAO_METRICS_PORT": str(sched_port), "PAO_LOG_LEVEL": "info"},
        tmp_path / "scheduler.log",
    )
    worker = Process(
        [sys.executable, "-m", "pao", "worker"],
        {**env, "PAO_METRICS_PORT": str(worker_port), "PAO_LOG_LEVEL": "debug"},
        tmp_path / "worker.log",
    )
    try:
        until(lambda: bool(_scrape(sched_port)) and bool(_scrape(worker_port)), "both servers")
        for port in (sched_port, worker_port):
            live = httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=5)
            assert live.status_code == 200
        run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
        until(
            lambda: (
                client.get(f"/runs/{run['id']}", headers=auth(writer_token)).json()["status"]
                == "succeeded"
            ),
            "the run to succeed",
        )
        # The rescued occurrence's retry runs too: two successes in all.
        until(
            lambda: metric(_scrape(worker_port), "pao_worker_runs_total", outcome="succeeded") >= 2,
            "the worker to count both runs",
        )
        w = _scrape(worker_port)
        assert metric(w, "pao_worker_claim_duration_seconds_count") >= 1
        assert metric(w, "pao_worker_claimed_total") >= 2
        assert metric(w, "pao_worker_lateness_seconds_count") >= 1  # first attempts only
        step = "pao_worker_step_duration_seconds_count"
        assert metric(w, step, tool="log", status="succeeded") >= 2
        assert metric(w, step, tool="sleep", status="succeeded") >= 2
        assert metric(w, "pao_worker_running") == 0

        until(
            lambda: (
                metric(_scrape(sched_port), "pao_due_work", state="queued") == 0
                and "pao_due_work{" in _scrape(sched_port)
            ),
            "the queue gauges",
        )
        s = _scrape(sched_port)
        assert metric(s, "pao_scheduler_lease_rescues_total", outcome="requeued") == 1
        tick = "pao_scheduler_tick_duration_seconds_count"
        for job in ("materialise", "rescue", "events", "heartbeat", "gauges"):
            assert metric(s, tick, job=job) >= 1, job
        assert "pao_worker_" not in s  # each process shows its own metrics
    finally:
        scheduler.kill()
        worker.kill()

    lines = [json.loads(line) for line in worker.output().splitlines() if line.strip()]
    about_run = [line for line in lines if line.get("run_id") == run["id"]]
    assert any("hello metrics" in line["message"] for line in about_run), lines
    assert all(line["task_id"] == task["id"] for line in about_run)
    assert {"timestamp", "level", "logger", "message"} <= set(about_run[0])
    sched_lines = [json.loads(line) for line in scheduler.output().splitlines() if line.strip()]
    assert any("rescued due_work" in line["message"] for line in sched_lines)
