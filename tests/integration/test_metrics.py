"""Metrics and JSON logs inside one process: the API's, the metrics server, the queue gauges."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, telemetry_config
from pao import logs
from pao.db import make_pool
from pao.probe_server import MetricsServer
from pao.settings import Settings
from scheduler.service import Scheduler
from tests.helpers import SEED_TASK, auth, metric


def test_api_counts_requests_by_route_template(client: TestClient, writer_token: str) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.get(f"/tasks/{task['id']}", headers=auth(writer_token)).status_code == 200
    assert client.get("/no/such/page/12345").status_code == 404
    after = client.get("/metrics")
    assert after.status_code == 200  # no token needed
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def moved(**labels: str) -> float:
        name = "pao_http_requests_total"
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert moved(method="GET", route="/tasks/{task_id}", status="200") == 3
    assert moved(method="GET", route="unmatched", status="404") == 1
    assert task["id"] not in text
    assert "/no/such" not in text
    count = "pao_http_request_duration_seconds_count"
    assert metric(text, count, method="GET", route="/tasks/{task_id}") >= 3


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the API's loggers write, formatted as PAO_LOG_FORMAT=json formats it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_json_access_lines_carry_the_request_and_task_ids(
    db_url: str, make_token: Callable[..., str], json_lines: io.StringIO
) -> None:
    token = make_token("tasks:read", "tasks:write")
    app = create_app(
        Settings(pool_min_size=1, pool_max_size=4, log_format="json"), database_url=db_url
    )
    with TestClient(app) as client:
        task = client.post("/tasks", json=SEED_TASK, headers=auth(token)).json()
        resp = client.get(
            f"/tasks/{task['id']}", headers={**auth(token), "X-Request-ID": "trace-me-1"}
        )
        assert resp.headers["X-Request-ID"] == "trace-me-1"
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    mine = [line for line in lines if line.get("request_id") == "trace-me-1"]
    assert len(mine) == 1, lines
    assert mine[0]["logger"] == "api.access"
    assert mine[0]["task_id"] == task["id"]
    assert mine[0]["message"].startswith("GET /tasks/{task_id} 200 ")
    assert {"timestamp", "level", "logger", "message"} <= set(mine[0])


def test_fastapi_opentelemetry_is_on_only_where_opentelemetry_is_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without an OTEL_* variable FastAPI's tracing, metrics and logs are off (it would look
    for providers on every request); with one, FastAPI's defaults apply."""
    off = {"tracing": False, "metrics": False, "logs": False}
    assert telemetry_config({"PATH": "/usr/bin"}) == off
    assert telemetry_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == {}
    assert telemetry_config({"FASTAPI_OTEL_AUTO_CONFIGURE": "true"}) == {}
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    assert not create_app(Settings(), database_url="postgresql://unused")._telemetry["tracing"]
    monkeypatch.setenv("OTEL_SERVICE_NAME", "pao-api")
    assert create_app(Settings(), database_url="postgresql://unused")._telemetry["tracing"]


def test_the_metrics_server_answers_scrapes_and_liveness() -> None:
    async def go() -> dict[str, Any]:
        server = MetricsServer()
        assert await server.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.port}"
        try:
            async with httpx.AsyncClient() as client:
                got = {
                    path: await client.get(base + path)
                    for path in ("/metrics", "/health/live", "/elsewhere")
                }
                got["post"] = await client.post(base + "/metrics")
                got["head"] = await client.head(base + "/health/live")
            # A second server cannot take the same port: logged, not fatal.
            assert not await MetricsServer().start("127.0.0.1", server.port or 0)
            return got
        finally:
            await server.close()

    got = asyncio.run(go())
    assert got["/metrics"].status_code == 200
    assert "python_info" in got["/metrics"].text or "process_" in got["/metrics"].text
    assert got["/metrics"].headers["content-type"].startswith("text/plain")
    assert got["/health/live"].json() == {"status": "ok"}
    assert got["/elsewhere"].status_code == 404
    assert got["post"].status_code == 405
    assert got["head"].status_code == 200
    assert got["head"].content == b""


def test_queue_gauges_read_exact_counts_and_planner_estimates(
    db_url: str, db: psycopg.Connection[Any], client: TestClient, writer_token: str
) -> None:
    task = client.post("/tasks", json=SEED_TASK, headers=auth(writer_token)).json()
    for _ in range(3):
        client.post(f"/tasks/{task['id']}/run_now", headers=auth(writer_token))
    db.execute(
        "INSERT INTO due_work (task_id, scheduled_for, run_after, reason, state, finished_at) "
        "SELECT %s, now() - i * interval '1 hour', now(), 'schedule', 'succeeded', now() "
        "FROM generate_series(1, 500) i",
        (task["id"],),
    )
    db.execute("ANALYZE due_work")

    async def go() -> None:
        pool = make_pool(db_url, min_size=1, max_size=2)
        await pool.open(wait=True)
        try:
            await Scheduler(Settings(), pool).measure_queue()
        finally:
            await pool.close()

    asyncio.run(go())
    text = client.get("/metrics").text  # same process, same registry
    assert metric(text, "pao_due_work", state="queued") == 3
    assert metric(text, "pao_due_work", state="running") == 0
    assert metric(text, "pao_due_work_ready") == 3
    # An estimate: right in size, not necessarily to the row.
    assert 400 <= metric(text, "pao_due_work_estimated", state="succeeded") <= 600
