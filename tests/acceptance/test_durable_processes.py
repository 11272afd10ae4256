"""Durable pipelines on real processes: a worker SIGKILLed mid-pipeline costs only the step it
was in; remote steps done by separate remote-worker processes over HTTP, while the run
holds no worker slot; a remote worker killed mid-step; a cancel during a remote step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.settings import Settings
from tests.acceptance.faults import assert_work_consistent
from tests.acceptance.procs import Process, pao_process, until_running, wait_ready
from tests.acceptance.test_streams import _api
from tests.helpers import SEED_TASK, auth, create_task, new_agent, run_now, until


@pytest.fixture
def settings() -> Settings:
    """The in-process API accepts loopback targets: the steps call a counting server."""
    return Settings(pool_min_size=1, pool_max_size=4, http_allow=("127.0.0.1",))


class Counting:
    """Loopback HTTP server counting hits per path. `/slow` holds its first request until
    released (its worker is killed meanwhile); later ones answer at once."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        counting = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with counting.lock:
                    counting.hits[self.path] += 1
                    first = counting.hits[self.path] == 1
                if self.path == "/slow" and first:
                    counting.release.wait(60)
                body = b'{"ok": true}'
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # its client was killed

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]


@pytest.fixture
def counting() -> Iterator[Counting]:
    server = Counting()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()


def _env(db_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "PAO_LOG_LEVEL": "info", **extra}


@pytest.mark.parametrize(
    ("resume", "again"),
    [("from_last_success", {"/a": 1, "/b": 1}), ("from_start", {"/a": 2, "/b": 2})],
)
def test_a_worker_killed_in_step_3_costs_only_step_3(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
    counting: Counting,
    resume: str,
    again: dict[str, int],
) -> None:
    env = _env(
        db_url,
        PAO_LEASE_SECONDS="3",
        PAO_RETRY_BASE_SECONDS="0",
        PAO_SCHEDULER_TICK_MS="200",
        PAO_HTTP_ALLOW="127.0.0.1",
    )
    steps = [
        {"id": path, "uses": "http.request", "with": {"url": counting.base + "/" + path}}
        for path in ("a", "b", "slow", "d")
    ]
    task_id = create_task(
        client,
        writer_token,
        *steps,
        max_retries=2,
        backoff_strategy="fixed",
        payload={"pipeline": steps, "resume": resume},
    )
    with (
        pao_process("scheduler", env, tmp_path / "scheduler.log") as sched,
        pao_process("worker", env, tmp_path / "a.log") as a,
    ):
        run_now(client, writer_token, task_id)
        until_running([sched, a], lambda: counting.count("/slow") == 1, "the worker in step 3")
        # Its checkpoints are saved (steps 1-2 succeeded, step 3 started) before it dies.
        until(
            lambda: (
                db.execute(
                    "SELECT jsonb_array_length(steps) = 3 FROM runs WHERE attempt = 1"
                ).fetchone()
                == (True,)
            ),
            "the run's progress to be saved",
        )
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        with pao_process("worker", env, tmp_path / "b.log") as b:
            until_running(
                [sched, b],
                lambda: db.execute("SELECT state FROM due_work").fetchone() == ("succeeded",),
                "the second worker to finish",
            )
    assert dict(counting.hits) == {**again, "/slow": 2, "/d": 1}
    rows = db.execute("SELECT attempt, status, steps FROM runs ORDER BY attempt").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(1, "failed"), (2, "succeeded")]
    resumed = [s["id"] for s in rows[1][2] if "resumed_from" in s]
    assert resumed == (["a", "b"] if resume == "from_last_success" else [])
    assert_work_consistent(db)


# Remote steps, with remote workers as processes of their own -------------------------

REMOTE_WORKER = r"""
import pathlib, sys, time
import httpx

base, token, name, go = sys.argv[1:5]
headers = {"Authorization": f"Bearer {token}"}
with httpx.Client(timeout=httpx.Timeout(10, read=40)) as http:
    while True:
        resp = http.post(f"{base}/task-types/media.encode/claim",
                         json={"limit": 1, "wait_seconds": 5}, headers=headers)
        resp.raise_for_status()
        if resp.json()["items"]:
            break
    item = resp.json()["items"][0]
    claim = item["claim_id"]
    print("claimed", claim, item["run_id"], flush=True)
    while not pathlib.Path(go).exists():
        beat = http.post(f"{base}/claims/{claim}/heartbeat", headers=headers)
        print("heartbeat", beat.status_code, flush=True)
        if beat.status_code == 409:
            sys.exit(3)
        http.post(f"{base}/claims/{claim}/progress",
                  json={"message": "encoding", "percent": 50}, headers=headers)
        time.sleep(0.3)
    done = http.post(f"{base}/claims/{claim}/complete",
                     json={"output": {"url": f"https://cdn.example.com/{name}"}}, headers=headers)
    print("completed", done.status_code, flush=True)
"""

TYPE = {
    "name": "media.encode",
    "parameters_schema": {
        "type": "object",
        "properties": {"src": {"type": "string"}},
        "required": ["src"],
    },
}


class Remote:
    """The processes of one remote-steps story: API, scheduler, a worker of one slot."""

    def __init__(self, db_url: str, tmp_path: Path, lease_seconds: int) -> None:
        self.tmp = tmp_path
        self.admin = new_agent(db_url, ["admin"], name="root")
        self.claimer = new_agent(db_url, ["work:claim"], name="encoder")
        self.base, self.api = _api(db_url, tmp_path, "api")
        env = _env(db_url, PAO_WORKER_CONCURRENCY="1", PAO_SCHEDULER_TICK_MS="200")
        self.sched = Process([sys.executable, "-m", "pao", "scheduler"], env, tmp_path / "s.log")
        self.worker = Process([sys.executable, "-m", "pao", "worker"], env, tmp_path / "w.log")
        self.remotes: list[subprocess.Popen[bytes]] = []
        self.http = httpx.Client(timeout=10)
        wait_ready(self.base, self.api)
        made = self.post("/task-types", {**TYPE, "lease_seconds": lease_seconds})
        assert made.status_code == 201, made.text
        (tmp_path / "remote_worker.py").write_text(REMOTE_WORKER)

    def post(self, path: str, body: Any = None, token: str | None = None) -> httpx.Response:
        return self.http.post(self.base + path, json=body, headers=auth(token or self.admin))

    def get(self, path: str) -> Any:
        resp = self.http.get(self.base + path, headers=auth(self.admin))
        assert resp.status_code == 200, resp.text
        return resp.json()

    def task(self, *steps: dict[str, Any]) -> str:
        resp = self.post("/tasks", {**SEED_TASK, "payload": {"pipeline": list(steps)}})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def run_now(self, task_id: str) -> str:
        resp = self.post(f"/tasks/{task_id}/run_now")
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def remote_worker(self, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with log.open("a") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(self.tmp / "remote_worker.py"),
                    self.base,
                    self.claimer,
                    name,
                    str(self.tmp / f"{name}.go"),
                ],
                stdout=out,
                stderr=out,
            )
        self.remotes.append(proc)
        return proc, log

    def run(self, run_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/runs/{run_id}")
        return found

    def until_run(self, run_id: str, status: str) -> dict[str, Any]:
        found: dict[str, Any] = until_running(
            [self.api, self.sched, self.worker],
            lambda: (run := self.run(run_id))["status"] == status and run,
            f"run {run_id} to be {status}",
        )
        return found

    def close(self) -> None:
        for proc in self.remotes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.http.close()
        for p in (self.worker, self.sched, self.api):
            p.kill()


@pytest.fixture
def remote(db_url: str, tmp_path: Path) -> Iterator[Remote]:
    story = Remote(db_url, tmp_path, lease_seconds=2)
    try:
        yield story
    finally:
        story.close()


def _claimed(log: Path) -> str | None:
    """The claim id a remote worker printed, once it has claimed."""
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("claimed "):
            return line.split()[1]
    return None


PIPELINE = (
    {"id": "hello", "uses": "log", "with": {"message": "before"}},
    {"id": "encode", "uses": "media.encode", "with": {"src": "s3://in/a.mov"}},
    {"id": "bye", "uses": "log", "with": {"message": "got ${steps.encode.url}"}},
)


def test_a_remote_step_end_to_end_holding_no_worker_slot(
    remote: Remote, db: psycopg.Connection[Any]
) -> None:
    one, one_log = remote.remote_worker("one")
    two, two_log = remote.remote_worker("two")
    run_id = remote.run_now(remote.task(*PIPELINE))

    def who() -> str | None:
        for name, log in (("one", one_log), ("two", two_log)):
            if _claimed(log):
                return name
        return None

    holder = until(who, "a remote worker to claim the step")
    waiting = remote.until_run(run_id, "running")
    assert [s["status"] for s in waiting["steps"]] == ["succeeded", "waiting"]
    assert db.execute("SELECT state, lease_owner FROM due_work").fetchone() == ("waiting", None)

    # The worker's one slot is free: another task runs meanwhile.
    other = remote.run_now(remote.task({"id": "x", "uses": "log", "with": {"message": "x"}}))
    remote.until_run(other, "succeeded")
    assert remote.run(run_id)["status"] == "running"

    (remote.tmp / f"{holder}.go").touch()
    done = remote.until_run(run_id, "succeeded")
    assert done["attempt"] == 1
    assert done["steps"][1]["output"] == {"url": f"https://cdn.example.com/{holder}"}
    logs = remote.get(f"/runs/{run_id}/logs")["items"]
    messages = [line["message"] for line in logs]
    assert messages[0] == "before"
    assert messages[-1] == f"got https://cdn.example.com/{holder}"
    assert messages.count("before") == 1
    # Two claimers of one type never held the step together: the other never got it.
    other_log = two_log if holder == "one" else one_log
    assert _claimed(other_log) is None
    assert db.execute("SELECT deliveries FROM remote_steps").fetchone() == (1,)
    assert_work_consistent(db, all_final=True)
    for proc in (one, two):
        proc.kill()


def test_a_remote_worker_killed_mid_step_is_replaced_and_fenced_out(
    remote: Remote, db: psycopg.Connection[Any]
) -> None:
    first, first_log = remote.remote_worker("first")
    run_id = remote.run_now(remote.task(*PIPELINE))
    stale = until(lambda: _claimed(first_log), "the first remote worker to claim")
    until_logged_file(first_log, "heartbeat 200")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    (remote.tmp / "second.go").touch()  # the second completes as soon as it claims
    _, second_log = remote.remote_worker("second")
    done = remote.until_run(run_id, "succeeded")
    assert _claimed(second_log) not in (None, stale)
    assert done["steps"][1]["output"] == {"url": "https://cdn.example.com/second"}
    for path, body in (
        ("heartbeat", None),
        ("complete", {"output": {"url": "https://stale.example/"}}),
        ("fail", {"error": "late", "retryable": True}),
    ):
        resp = remote.post(f"/claims/{stale}/{path}", body, token=remote.claimer)
        assert resp.status_code == 409, (path, resp.text)
    assert remote.run(run_id) == done
    assert_work_consistent(db)


def test_cancel_during_a_remote_step(remote: Remote, db: psycopg.Connection[Any]) -> None:
    holder, log = remote.remote_worker("holder")
    run_id = remote.run_now(remote.task(*PIPELINE))
    until(lambda: _claimed(log), "the remote worker to claim")
    until_logged_file(log, "heartbeat 200")
    resp = remote.post(f"/runs/{run_id}/cancel")
    assert resp.status_code == 202, resp.text
    assert remote.run(run_id)["status"] == "cancelled"
    assert holder.wait(15) == 3  # its next heartbeat was a 409
    assert "heartbeat 409" in log.read_text()
    assert db.execute("SELECT state FROM due_work").fetchone() == ("cancelled",)
    assert_work_consistent(db)


def until_logged_file(log: Path, text: str) -> None:
    until(lambda: log.exists() and text in log.read_text(), f"{text!r} in {log.name}")
