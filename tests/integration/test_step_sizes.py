"""A step's rendered input, its output and a run's total are capped; over a cap the step
fails at once, with the setting to change, and is not retried (it would fail again)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.settings import Settings
from tests.background import worker
from tests.helpers import SEED_TASK, auth, serving

MIB = 1024 * 1024


@pytest.fixture
def settings() -> Settings:
    """The API here accepts loopback targets, so steps can fetch from a local server."""
    return Settings(pool_min_size=1, pool_max_size=4, http_allow=("127.0.0.1",))


class _Sized(BaseHTTPRequestHandler):
    """GET /<n> answers n bytes of 'x' as text/plain."""

    def do_GET(self) -> None:
        size = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * 65536
        left = size
        while left > 0:
            self.wfile.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def sized() -> Iterator[str]:
    with serving(_Sized) as base:
        yield base


def _run(
    client: TestClient, token: str, steps: list[dict[str, Any]], **fields: Any
) -> tuple[str, str]:
    body = {**SEED_TASK, "payload": {"pipeline": steps}, **fields}
    resp = client.post("/tasks", json=body, headers=auth(token))
    assert resp.status_code == 201, resp.text
    task_id = str(resp.json()["id"])
    resp = client.post(f"/tasks/{task_id}/run_now", headers=auth(token))
    assert resp.status_code == 202, resp.text
    return task_id, str(resp.json()["id"])


def _final(client: TestClient, token: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}", headers=auth(token)).json()
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never ended: {run}")


def _attempts(db: psycopg.Connection[Any], task_id: str) -> list[tuple[int, str]]:
    rows = db.execute(
        "SELECT attempt, status FROM runs WHERE task_id = %s ORDER BY attempt", (task_id,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _fetch(sized: str, size: int, step_id: str = "a") -> dict[str, Any]:
    return {
        "id": step_id,
        "uses": "http.request",
        "with": {"url": f"{sized}/{size}", "max_bytes": 10 * MIB},
    }


def test_an_input_past_the_cap_fails_its_step_without_retries(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    sized: str,
) -> None:
    """The 2 GiB shape: a 10 MiB body, looked up 200 times in one input."""
    steps = [
        _fetch(sized, 10 * MIB),
        {"id": "b", "uses": "log", "with": {"message": "${steps.a.body}" * 200}},
        {"id": "c", "uses": "log", "with": {"message": "never"}},
    ]
    with worker(db_url, http_allow=("127.0.0.1",), retry_base_seconds=0):
        task_id, run_id = _run(client, writer_token, steps, max_retries=3)
        run = _final(client, writer_token, run_id)
    assert run["status"] == "failed", run
    error = run["error"]
    assert error.startswith("step b: its input is more than 1048576 bytes"), error
    assert "PAO_STEP_INPUT_MAX_BYTES" in error
    assert "${steps.a.body}" in error
    assert "retrying" not in error
    assert [s["status"] for s in run["steps"]] == ["succeeded", "failed"]
    assert _attempts(db, task_id) == [(1, "failed")]


def test_an_output_past_the_cap_fails_its_step(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    sized: str,
) -> None:
    steps = [_fetch(sized, 8192), {"id": "b", "uses": "log", "with": {"message": "never"}}]
    with worker(db_url, http_allow=("127.0.0.1",), step_output_max_bytes=4096):
        task_id, run_id = _run(client, writer_token, steps, max_retries=2)
        run = _final(client, writer_token, run_id)
    assert run["status"] == "failed", run
    assert run["error"].startswith("step a: its output is more than 4096 bytes"), run["error"]
    assert "PAO_STEP_OUTPUT_MAX_BYTES" in run["error"]
    assert [s["status"] for s in run["steps"]] == ["failed"]
    assert "output" not in run["steps"][0]
    assert _attempts(db, task_id) == [(1, "failed")]


def test_a_run_holds_at_most_four_outputs_worth(
    client: TestClient,
    writer_token: str,
    db_url: str,
    sized: str,
) -> None:
    """Each output is under its cap; together they pass the run's (4 times the output cap)."""
    steps = [_fetch(sized, 50_000, f"s{n}") for n in range(6)]
    with worker(db_url, http_allow=("127.0.0.1",), step_output_max_bytes=64 * 1024):
        _, run_id = _run(client, writer_token, steps)
        run = _final(client, writer_token, run_id)
    assert run["status"] == "failed", run
    assert run["error"].startswith("step s5: the run's steps would hold more than 262144 bytes")
    assert "4 times PAO_STEP_OUTPUT_MAX_BYTES" in run["error"]
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 5 + ["failed"]


def test_a_worker_goes_on_after_a_step_too_large(
    client: TestClient, writer_token: str, db_url: str, sized: str
) -> None:
    big = [_fetch(sized, 2 * MIB), {"id": "b", "uses": "log", "with": {"message": "${steps.a}"}}]
    small = [{"id": "hi", "uses": "log", "with": {"message": "still here"}}]
    with worker(db_url, http_allow=("127.0.0.1",)):
        _, failing = _run(client, writer_token, big)
        assert _final(client, writer_token, failing)["status"] == "failed"
        _, fine = _run(client, writer_token, small)
        assert _final(client, writer_token, fine)["status"] == "succeeded"
