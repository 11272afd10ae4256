"""Durable pipelines against a real database: checkpoints and resume, remote steps that
wait without a worker, their continuation, retries, cancel and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.db import connect
from pao.settings import Settings
from pao.store import work
from tests.acceptance.faults import assert_work_consistent
from tests.background import scheduler
from tests.background import worker as background_worker
from tests.helpers import SEED_TASK, auth, until
from tests.integration.test_task_types import create_type


@pytest.fixture
def settings() -> Settings:
    """The API here accepts loopback targets: the steps call a counting server."""
    return Settings(pool_min_size=1, pool_max_size=4, http_allow=("127.0.0.1",))


class Counting:
    """A loopback HTTP server counting hits per path; `/slow-once` sleeps on its first hit."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        counting = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with counting.lock:
                    counting.hits[self.path] += 1
                    first = counting.hits[self.path] == 1
                if self.path == "/slow-once" and first:
                    time.sleep(3)
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def step(self, step_id: str, path: str, **extra: Any) -> dict[str, Any]:
        return {"id": step_id, "uses": "http.request", "with": {"url": self.base + path}, **extra}


@pytest.fixture
def counting() -> Iterator[Counting]:
    server = Counting()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def _create(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    resp = client.post("/tasks", json={**SEED_TASK, **fields}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _run_now(client: TestClient, token: str, task: dict[str, Any]) -> str:
    resp = client.post(f"/tasks/{task['id']}/run_now", headers=auth(token))
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _runs(client: TestClient, token: str, task: dict[str, Any]) -> list[dict[str, Any]]:
    items = client.get("/runs", params={"task_id": task["id"]}, headers=auth(token)).json()
    return sorted(items["items"], key=lambda r: r["attempt"])


def _state(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = db.execute("SELECT state, attempt FROM due_work").fetchone()
    assert row is not None
    return tuple(row)


def _until_state(db: psycopg.Connection[Any], *state: Any, timeout: float = 20) -> None:
    until(lambda: _state(db) == state, f"the occurrence to be {state}", timeout)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The attempts for which the worker read an earlier attempt's checkpoints."""
    seen: list[int] = []
    real = work.previous_steps

    async def spy(conn: Any, *, due_work_id: int, attempt: int) -> Any:
        seen.append(attempt)
        return await real(conn, due_work_id=due_work_id, attempt=attempt)

    monkeypatch.setattr(work, "previous_steps", spy)
    return seen


def _slow_pipeline(counting: Counting, **extra: Any) -> dict[str, Any]:
    """a, a skipped step, b, then c (times out on its first try), then d."""
    return {
        "pipeline": [
            counting.step("a", "/a", save_as="first"),
            {
                "id": "never",
                "uses": "log",
                "with": {"message": "skipped"},
                "if": "${steps.first.status} == 999",
            },
            counting.step("b", "/b"),
            counting.step("c", "/slow-once", timeout_seconds=1),
            {"id": "d", "uses": "log", "with": {"message": "a said ${steps.first.status}"}},
        ],
        **extra,
    }


def _run_until_retried(
    client: TestClient,
    token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    payload: dict[str, Any],
) -> dict[str, Any]:
    """A task allowed one retry, run now by a worker until its second attempt succeeds."""
    task = _create(client, token, max_retries=1, backoff_strategy="fixed", payload=payload)
    with background_worker(db_url, retry_base_seconds=0, http_allow=("127.0.0.1",)):
        _run_now(client, token, task)
        _until_state(db, "succeeded", 2)
    return task


def test_a_retry_resumes_after_the_last_step_that_succeeded(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    counting: Counting,
    reads: list[int],
) -> None:
    task = _run_until_retried(client, writer_token, db_url, db, _slow_pipeline(counting))
    assert counting.hits == {"/a": 1, "/b": 1, "/slow-once": 2}
    first, second = _runs(client, writer_token, task)
    assert first["status"] == "failed"
    assert "timed out" in first["error"]
    assert second["status"] == "succeeded"
    steps = {s["id"]: s for s in second["steps"]}
    assert steps["a"]["status"] == "succeeded"
    assert steps["a"]["resumed_from"] == 1
    assert steps["a"]["output"] == first["steps"][0]["output"]
    assert steps["never"]["status"] == "skipped"  # evaluated again, still false
    assert steps["b"]["resumed_from"] == 1
    assert "resumed_from" not in steps["c"]
    assert "resumed_from" not in steps["d"]
    logs = client.get(f"/runs/{second['id']}/logs", headers=auth(writer_token)).json()
    assert [line["message"] for line in logs["items"]] == ["a said 200"]  # save_as restored
    assert reads == [2]  # the first attempt read nothing
    assert_work_consistent(db)


def test_from_start_runs_every_step_again(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    counting: Counting,
    reads: list[int],
) -> None:
    task = _run_until_retried(
        client, writer_token, db_url, db, _slow_pipeline(counting, resume="from_start")
    )
    assert counting.hits == {"/a": 2, "/b": 2, "/slow-once": 2}
    second = _runs(client, writer_token, task)[1]
    assert all("resumed_from" not in s for s in second["steps"])
    assert reads == []


def test_resume_is_validated(client: TestClient, writer_token: str) -> None:
    bad = {**SEED_TASK, "payload": {**SEED_TASK["payload"], "resume": "sometimes"}}
    resp = client.post("/tasks", json=bad, headers=auth(writer_token))
    assert resp.status_code == 422
    [error] = resp.json()["errors"]
    assert error["loc"] == ["body", "payload", "resume"]
    assert "from_start" in error["message"]


# Remote steps ----------------------------------------------------------------------


@pytest.fixture
def claimer(make_token: Callable[..., str]) -> str:
    return make_token("work:claim", name="encoder")


def _remote_task(**fields: Any) -> dict[str, Any]:
    encode: dict[str, Any] = {
        "id": "encode",
        "uses": "media.transcode",
        "with": {"url": "https://example.com/a.mp4", "width": 640},
    }
    encode.update(fields.pop("encode", {}))
    return {
        **SEED_TASK,
        "payload": {
            "pipeline": [
                {"id": "hello", "uses": "log", "with": {"message": "before"}},
                encode,
                {"id": "bye", "uses": "log", "with": {"message": "got ${steps.encode.url}"}},
            ]
        },
        **fields,
    }


def _claim(client: TestClient, token: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        resp = client.post(
            "/task-types/media.transcode/claim",
            json={"limit": 1, "wait_seconds": 0},
            headers=auth(token),
        )
        assert resp.status_code == 200, resp.text
        items: list[dict[str, Any]] = resp.json()["items"]
        return items[0] if items else None

    item: dict[str, Any] = until(found, "a remote step to claim", 20)
    return item


def _logs(client: TestClient, token: str, run_id: str) -> list[str]:
    items = client.get(f"/runs/{run_id}/logs", headers=auth(token)).json()["items"]
    return [line["message"] for line in items]


def _no_worker_claims(db_url: str) -> None:
    async def go() -> None:
        conn = await connect(db_url)
        try:
            await conn.set_autocommit(True)
            started = await work.claim_unkeyed(conn, worker_id="w", limit=10, lease_seconds=5)
            assert started.claimed == []
            assert not started.keyed
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_remote_step_waits_without_a_worker_and_the_run_continues(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token, lease_seconds=5)
    task = _create(client, writer_token, **_remote_task())
    with background_worker(db_url):
        run_id = _run_now(client, writer_token, task)
        _until_state(db, "waiting", 1)
        lease = db.execute("SELECT lease_owner, wait_until IS NOT NULL FROM due_work").fetchone()
        assert lease == (None, True)
        run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
        assert run["status"] == "running"
        assert [s["status"] for s in run["steps"]] == ["succeeded", "waiting"]
        _no_worker_claims(db_url)  # a waiting occurrence is never a worker's
        assert_work_consistent(db, all_final=False)

        item = _claim(client, claimer)
        assert item["run_id"] == run_id
        assert item["step_id"] == "encode"
        prog = client.post(
            f"/claims/{item['claim_id']}/progress",
            json={"message": "encoding", "percent": 40},
            headers=auth(claimer),
        )
        assert prog.status_code == 200, prog.text
        shown = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()["steps"][1]
        assert shown["status"] == "waiting"
        assert shown["remote"]["state"] == "claimed"
        assert shown["remote"]["holder_name"] == "encoder"
        assert shown["remote"]["progress"] == "40% encoding"
        done = client.post(
            f"/claims/{item['claim_id']}/complete",
            json={"output": {"url": "https://cdn.example.com/a-640.mp4"}},
            headers=auth(claimer),
        )
        assert done.status_code == 200, done.text
        _until_state(db, "succeeded", 1)
    run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert run["status"] == "succeeded"
    assert run["attempt"] == 1
    assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded", "succeeded"]
    assert run["steps"][1]["output"] == {"url": "https://cdn.example.com/a-640.mp4"}
    assert _logs(client, writer_token, run_id) == [
        "before",  # once: the continuation reused it
        "40% encoding",  # the remote worker's progress
        "got https://cdn.example.com/a-640.mp4",
    ]
    assert len(_runs(client, writer_token, task)) == 1  # no new run, no new attempt
    assert_work_consistent(db)


def _fail(client: TestClient, token: str, item: dict[str, Any], *, retryable: bool) -> None:
    resp = client.post(
        f"/claims/{item['claim_id']}/fail",
        json={"error": "the encoder crashed", "retryable": retryable},
        headers=auth(token),
    )
    assert resp.status_code == 200, resp.text


def test_a_retryable_failure_is_retried_and_offered_again(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token, lease_seconds=5)
    task = _create(client, writer_token, max_retries=1, backoff_strategy="fixed", **_remote_task())
    with background_worker(db_url, retry_base_seconds=0):
        _run_now(client, writer_token, task)
        _fail(client, claimer, _claim(client, claimer), retryable=True)
        again = _claim(client, claimer)
        assert again["attempt"] == 2
        done = client.post(
            f"/claims/{again['claim_id']}/complete",
            json={"output": {"url": "https://x.example/b"}},
            headers=auth(claimer),
        )
        assert done.status_code == 200, done.text
        _until_state(db, "succeeded", 2)
    first, second = _runs(client, writer_token, task)
    assert first["status"] == "failed"
    assert "the encoder crashed; retrying" in first["error"]
    assert first["steps"][1]["status"] == "failed"
    assert second["status"] == "succeeded"
    assert second["steps"][0]["resumed_from"] == 1
    assert _logs(client, writer_token, first["id"]) == ["before"]
    assert _logs(client, writer_token, second["id"]) == ["got https://x.example/b"]
    assert_work_consistent(db)


def test_a_failure_that_cannot_be_retried_fails_the_run(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token, lease_seconds=5)
    task = _create(client, writer_token, max_retries=3, **_remote_task())
    with background_worker(db_url):
        run_id = _run_now(client, writer_token, task)
        _fail(client, claimer, _claim(client, claimer), retryable=False)
        _until_state(db, "failed", 1)
    run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert run["status"] == "failed"
    assert run["error"] == "step encode: the encoder crashed"
    assert len(_runs(client, writer_token, task)) == 1
    assert_work_consistent(db)


def test_an_inactive_task_type_fails_the_run_without_retries(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token)
    task = _create(client, writer_token, max_retries=3, **_remote_task())
    gone = client.delete("/task-types/media.transcode", headers=auth(admin_token))
    assert gone.status_code in (200, 204), gone.text
    with background_worker(db_url):
        run_id = _run_now(client, writer_token, task)
        _until_state(db, "failed", 1)
    run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert "inactive" in run["error"]
    assert run["steps"][1]["status"] == "failed"
    assert db.execute("SELECT count(*) FROM remote_steps").fetchone() == (0,)
    assert len(_runs(client, writer_token, task)) == 1


def test_a_wait_past_its_deadline_is_ended_by_the_scheduler(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token, lease_seconds=5)
    task = _create(
        client, writer_token, **_remote_task(encode={"timeout_seconds": 1}, max_retries=0)
    )
    with background_worker(db_url), scheduler(db_url, scheduler_tick_ms=100):
        run_id = _run_now(client, writer_token, task)
        item = _claim(client, claimer)
        _until_state(db, "timed_out", 1)
    run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert run["status"] == "timed_out"
    assert "did not end in time" in run["error"]
    assert run["steps"][1]["status"] == "failed"
    beat = client.post(f"/claims/{item['claim_id']}/heartbeat", headers=auth(claimer))
    assert beat.status_code == 409
    assert db.execute("SELECT state FROM remote_steps").fetchone() == ("cancelled",)
    assert_work_consistent(db)


def test_cancel_stops_a_waiting_run_and_its_remote_step(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token, lease_seconds=5)
    task = _create(client, writer_token, **_remote_task())
    with background_worker(db_url):
        run_id = _run_now(client, writer_token, task)
        item = _claim(client, claimer)
        _until_state(db, "waiting", 1)
        resp = client.post(f"/runs/{run_id}/cancel", headers=auth(writer_token))
        assert resp.status_code == 202, resp.text
        assert _state(db) == ("cancelled", 1)  # at once: no worker holds it
    run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert run["status"] == "cancelled"
    beat = client.post(f"/claims/{item['claim_id']}/heartbeat", headers=auth(claimer))
    assert beat.status_code == 409
    done = client.post(
        f"/claims/{item['claim_id']}/complete",
        json={"output": {"url": "https://late.example/"}},
        headers=auth(claimer),
    )
    assert done.status_code == 409
    assert client.get(f"/runs/{run_id}", headers=auth(writer_token)).json() == run
    assert_work_consistent(db)


def test_task_cancel_drops_its_waiting_work(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token, lease_seconds=5)
    task = _create(client, writer_token, **_remote_task())
    with background_worker(db_url):
        run_id = _run_now(client, writer_token, task)
        _until_state(db, "waiting", 1)
        resp = client.post(f"/tasks/{task['id']}/cancel", headers=auth(writer_token))
        assert resp.status_code in (200, 202), resp.text
        assert _state(db) == ("cancelled", 1)
    assert client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()["status"] == (
        "cancelled"
    )
    assert db.execute("SELECT state FROM remote_steps").fetchone() == ("cancelled",)
    assert_work_consistent(db)


def test_a_run_handed_back_at_shutdown_keeps_its_checkpoints(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    counting: Counting,
    reads: list[int],
) -> None:
    task = _create(
        client,
        writer_token,
        payload={
            "pipeline": [
                counting.step("a", "/a"),
                counting.step("slow", "/slow-once"),
                counting.step("d", "/d"),
            ]
        },
    )
    allow = ("127.0.0.1",)
    with background_worker(db_url, shutdown_grace_seconds=0, http_allow=allow):
        run_id = _run_now(client, writer_token, task)
        until(lambda: counting.hits["/slow-once"] == 1, "the worker in the slow step")
    # Handed back unspent, with the step that succeeded.
    assert _state(db) == ("queued", 1)
    queued = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert queued["status"] == "queued"
    assert [(s["id"], s["status"]) for s in queued["steps"]] == [("a", "succeeded")]
    with background_worker(db_url, http_allow=allow):
        _until_state(db, "succeeded", 1)
    assert counting.hits == {"/a": 1, "/slow-once": 2, "/d": 1}
    done = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert done["steps"][0]["resumed_from"] == 1
    assert reads == []  # the run's own checkpoints came with its claim
    assert_work_consistent(db)


# A cancel racing a complete -------------------------------------------------------------


async def _wait_for_a_lock_wait(db_url: str) -> None:
    """Until another backend of this database waits for a row lock."""
    conn = await connect(db_url)
    try:
        await conn.set_autocommit(True)
        for _ in range(500):
            cur = await conn.execute(
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
            if row is not None and row["n"] > 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the second transaction never waited for a lock")
    finally:
        await conn.close()


@pytest.mark.parametrize("first", ["complete", "cancel"])
def test_a_cancel_racing_a_complete_does_not_deadlock(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    first: str,
) -> None:
    """Two real transactions: the `first` one stops between its locks, the other starts and
    waits for it, then the first goes on. Both take the occurrence, then the run, then the
    remote step, so neither deadlocks (PostgreSQL would abort one: a 503). Whichever
    commits first decides: a step completed first is a checkpoint and the cancel then ends
    the continued run; a cancel first leaves the holder a 409 and the step cancelled."""
    from pao.domain import claims
    from pao.domain import runs as run_logic
    from pao.errors import ClaimLost
    from pao.store import agents as agent_store
    from pao.store import remote_steps as remote_store
    from pao.store import runs as run_store

    create_type(client, admin_token, lease_seconds=30)
    task = _create(client, writer_token, **_remote_task())
    with background_worker(db_url):
        run_id = _run_now(client, writer_token, task)
        item = _claim(client, claimer)
        _until_state(db, "waiting", 1)

    go_on = asyncio.Event()

    async def paused(real: Any, side: str, *args: Any, **kwargs: Any) -> Any:
        found = await real(*args, **kwargs)
        if side == first:
            await go_on.wait()  # hold this transaction's first locks
        return found

    real_lock, real_get_run = remote_store.lock, run_store.get_run

    async def lock(*args: Any, **kwargs: Any) -> Any:
        return await paused(real_lock, "complete", *args, **kwargs)

    async def get_run(*args: Any, **kwargs: Any) -> Any:
        return await paused(real_get_run, "cancel", *args, **kwargs)

    monkeypatch.setattr(remote_store, "lock", lock)
    monkeypatch.setattr(run_store, "get_run", get_run)

    async def agent(conn: Any, sql: str) -> Any:
        cur = await conn.execute(sql, {"run": run_id})
        row = await cur.fetchone()
        return await agent_store.get_agent(conn, row["id"])

    async def race() -> tuple[Any, Any]:
        a, b = await connect(db_url), await connect(db_url)
        try:
            holder = await agent(a, "SELECT holder_agent_id AS id FROM remote_steps")
            owner = await agent(
                b,
                "SELECT t.created_by AS id FROM runs r JOIN tasks t ON t.id = r.task_id "
                "WHERE r.id = %(run)s",
            )
            await a.commit()
            await b.commit()

            async def complete() -> None:
                async with a.transaction():
                    await claims.complete(
                        a,
                        holder,
                        item["claim_id"],
                        output={"url": "https://x.example/"},
                        cost=None,
                        now=datetime.now(UTC),  # no cost: no spending window to choose
                    )

            async def cancel() -> Any:
                async with b.transaction():
                    return await run_logic.cancel_run(b, owner, uuid.UUID(run_id), request_id=None)

            one, two = (complete, cancel) if first == "complete" else (cancel, complete)
            started = asyncio.create_task(one())
            await asyncio.sleep(0.2)  # `one` holds its first locks and stops there
            assert not started.done()
            other = asyncio.create_task(two())
            await _wait_for_a_lock_wait(db_url)  # `two` waits for `one`
            go_on.set()
            done = await asyncio.gather(started, other, return_exceptions=True)
            by_side = dict(zip((one.__name__, two.__name__), done, strict=True))
            return by_side["complete"], by_side["cancel"]
        finally:
            await a.close()
            await b.close()

    completed, cancelled = asyncio.run(race())
    for outcome in (completed, cancelled):
        assert not isinstance(outcome, psycopg.errors.DeadlockDetected), outcome
    assert not isinstance(cancelled, BaseException), cancelled
    assert cancelled.status == "cancelled"
    step = db.execute("SELECT state, output FROM remote_steps").fetchone()
    run = db.execute("SELECT status FROM runs").fetchone()
    assert run == ("cancelled",)
    if first == "complete":
        assert completed is None  # the step succeeded: its output is the run's checkpoint
        assert step == ("succeeded", {"url": "https://x.example/"})
    else:
        assert isinstance(completed, ClaimLost), completed  # the holder's 409
        assert step == ("cancelled", None)
    assert _state(db) == ("cancelled", 1)
    assert_work_consistent(db)


def test_completing_many_waiting_steps_continues_each_run(
    client: TestClient,
    admin_token: str,
    writer_token: str,
    claimer: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    create_type(client, admin_token, lease_seconds=30)
    tasks = [_create(client, writer_token, **_remote_task(title=f"remote {n}")) for n in range(3)]
    with background_worker(db_url):
        run_ids = [_run_now(client, writer_token, task) for task in tasks]
        until(
            lambda: (
                db.execute("SELECT count(*) FROM due_work WHERE state = 'waiting'").fetchone()
                == (3,)
            ),
            "three runs waiting",
            20,
        )
        resp = client.post(
            "/task-types/media.transcode/claim",
            json={"limit": 3, "wait_seconds": 5},
            headers=auth(claimer),
        )
        items = resp.json()["items"]
        assert len(items) == 3
        done = client.post(
            "/claims/complete",
            json={
                "items": [
                    {"claim_id": it["claim_id"], "output": {"url": f"https://cdn/{it['run_id']}"}}
                    for it in items
                ]
            },
            headers=auth(claimer),
        )
        assert done.status_code == 200, done.text
        assert [i["status"] for i in done.json()["items"]] == [200, 200, 200]
        until(
            lambda: (
                db.execute("SELECT count(*) FROM due_work WHERE state = 'succeeded'").fetchone()
                == (3,)
            ),
            "three runs continued and done",
            20,
        )
    for run_id in run_ids:
        run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
        assert run["status"] == "succeeded"
        assert run["attempt"] == 1
        assert run["steps"][1]["output"] == {"url": f"https://cdn/{run_id}"}
        assert _logs(client, writer_token, run_id)[-1] == f"got https://cdn/{run_id}"
    assert_work_consistent(db)
