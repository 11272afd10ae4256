"""The worker against a real database: runs, retries, cancels, leases, conditions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.settings import Settings
from tests.background import scheduler, worker
from tests.helpers import SEED_TASK, auth, serving, until


@pytest.fixture
def settings() -> Settings:
    """The API here accepts loopback targets, so the worker's own guard can be tested."""
    return Settings(pool_min_size=1, pool_max_size=4, http_allow=("127.0.0.1",))


def _create(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    resp = client.post("/tasks", json={**SEED_TASK, **fields}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _run_now(client: TestClient, token: str, task: dict[str, Any]) -> str:
    resp = client.post(f"/tasks/{task['id']}/run_now", headers=auth(token))
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _wait(
    client: TestClient,
    token: str,
    run_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 15,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/runs/{run_id}", headers=auth(token)).json()
        return run if done(run) else None

    result: dict[str, Any] = until(reached, f"run {run_id} to get there", timeout)
    return result


def _final(run: dict[str, Any]) -> bool:
    return run["status"] not in ("queued", "running")


def _pipeline(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"pipeline": list(steps), **extra}


def test_a_run_goes_through_its_steps(client: TestClient, writer_token: str, db_url: str) -> None:
    task = _create(
        client,
        writer_token,
        payload=_pipeline(
            {"id": "hello", "uses": "log", "with": {"message": "hi ${task.title}"}},
            {"id": "nap", "uses": "sleep", "with": {"seconds": 0.1}, "save_as": "rest"},
            {
                "id": "skip",
                "uses": "log",
                "with": {"message": "never"},
                "if": "${steps.rest.slept} > 1",
            },
            {"id": "bye", "uses": "log", "with": {"message": "slept ${steps.rest.slept}s"}},
        ),
    )
    with worker(db_url):
        run_id = _run_now(client, writer_token, task)
        done = _wait(client, writer_token, run_id, _final)
    assert done["status"] == "succeeded", done
    assert [s["status"] for s in done["steps"]] == [
        "succeeded",
        "succeeded",
        "skipped",
        "succeeded",
    ]
    assert done["steps"][1]["output"] == {"slept": 0.1}
    assert done["duration_ms"] >= 100
    logs = client.get(f"/runs/{run_id}/logs", headers=auth(writer_token)).json()["items"]
    assert [(line["step_id"], line["message"]) for line in logs] == [
        ("hello", "hi Morning Briefing"),
        ("bye", "slept 0.1s"),
    ]


def test_a_failing_step_is_retried_then_fails(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    # Loopback is refused by the private-address guard, every time.
    task = _create(
        client,
        writer_token,
        max_retries=2,
        backoff_strategy="fixed",
        payload=_pipeline(
            {"id": "get", "uses": "http.request", "with": {"url": "http://127.0.0.1:9/"}}
        ),
    )
    with worker(db_url, retry_base_seconds=0):
        first = _run_now(client, writer_token, task)
        _wait(client, writer_token, first, _final)
        until(
            lambda: db.execute("SELECT state, attempt FROM due_work").fetchall() == [("failed", 3)],
            "the third attempt to fail",
            15,
        )
    runs = client.get("/runs", params={"task_id": task["id"]}, headers=auth(writer_token)).json()
    attempts = sorted((r["attempt"], r["status"]) for r in runs["items"])
    assert attempts == [(1, "failed"), (2, "failed"), (3, "failed")]
    errors = [r["error"] for r in runs["items"]]
    assert all("loopback" in e or "private" in e for e in errors), errors
    assert "retrying" in next(r["error"] for r in runs["items"] if r["attempt"] == 1)


def test_cancel_stops_a_running_pipeline_within_a_second(
    client: TestClient, writer_token: str, db_url: str
) -> None:
    task = _create(
        client,
        writer_token,
        payload=_pipeline({"id": "long", "uses": "sleep", "with": {"seconds": 30}}),
    )
    with worker(db_url):
        run_id = _run_now(client, writer_token, task)
        _wait(client, writer_token, run_id, lambda r: r["status"] == "running")
        asked = time.monotonic()
        assert client.post(f"/runs/{run_id}/cancel", headers=auth(writer_token)).status_code == 202
        done = _wait(client, writer_token, run_id, _final)
        took = time.monotonic() - asked
    assert done["status"] == "cancelled"
    assert took < 2.5, took


def test_a_worker_that_lost_its_lease_writes_nothing(
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = _create(
        client,
        writer_token,
        payload=_pipeline(
            {"id": "long", "uses": "sleep", "with": {"seconds": 2}},
            {"id": "after", "uses": "log", "with": {"message": "must not appear"}},
        ),
    )
    with worker(db_url):
        run_id = _run_now(client, writer_token, task)
        _wait(client, writer_token, run_id, lambda r: r["status"] == "running")
        # What a rescue does: the occurrence moves to another attempt and owner.
        db.execute(
            "UPDATE due_work SET attempt = 2, lease_owner = 'someone-else', "
            "lease_expires_at = now() + interval '1 minute'"
        )
        # The worker finds out (a renewal or the end refused) and says it wrote nothing.
        until(
            lambda: (
                f"run {run_id}: lease lost" in caplog.text
                or f"run {run_id}: its end was not recorded" in caplog.text
            ),
            "the worker to give the run up",
        )
    state = db.execute("SELECT state, attempt, lease_owner FROM due_work").fetchone()
    assert state == ("running", 2, "someone-else")
    run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
    assert run["status"] == "running"  # nothing written by the old holder
    assert client.get(f"/runs/{run_id}/logs", headers=auth(writer_token)).json()["items"] == []


def test_a_once_task_completes_after_its_run(
    client: TestClient, writer_token: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    task = _create(client, writer_token, schedule_kind="once", schedule_expr=at)
    with worker(db_url), scheduler(db_url, scheduler_tick_ms=100):
        until(
            lambda: (
                client.get(f"/tasks/{task['id']}", headers=auth(writer_token)).json()["status"]
                == "completed"
            ),
            "the once task to complete",
            15,
        )
    [run] = client.get("/runs", params={"task_id": task["id"]}, headers=auth(writer_token)).json()[
        "items"
    ]
    assert run["status"] == "succeeded"
    assert run["scheduled_for"] == at.replace("+00:00", "Z")
    # The worker knew its end was written (completing the task reads the end back first).
    assert "not recorded" not in caplog.text


def test_step_events_trigger_other_tasks(
    client: TestClient, writer_token: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    listener = _create(
        client,
        writer_token,
        schedule_kind="event",
        schedule_expr="report.*",
        payload=_pipeline({"id": "got", "uses": "log", "with": {"message": "${event.payload.n}"}}),
    )
    publisher = _create(
        client,
        writer_token,
        payload=_pipeline(
            {
                "id": "emit",
                "uses": "events.publish",
                "with": {"type": "report.ready", "payload": {"n": 7}},
            }
        ),
    )
    with worker(db_url), scheduler(db_url, scheduler_tick_ms=100):
        run_id = _run_now(client, writer_token, publisher)
        _wait(client, writer_token, run_id, _final)
        runs: list[dict[str, Any]] = until(
            lambda: client.get(
                "/runs",
                params={"task_id": listener["id"], "status": "succeeded"},
                headers=auth(writer_token),
            ).json()["items"],
            "the listener's run to succeed",
            15,
        )
    assert len(runs) == 1
    logs = client.get(f"/runs/{runs[0]['id']}/logs", headers=auth(writer_token)).json()["items"]
    assert [line["message"] for line in logs] == ["7"]


class _Flag(BaseHTTPRequestHandler):
    ready = False

    def do_GET(self) -> None:
        body = json.dumps({"ready": _Flag.ready}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def flag_server() -> Iterator[str]:
    with serving(_Flag) as base:
        yield f"{base}/flag"


def test_condition_fires_on_the_false_to_true_edge_only(
    client: TestClient, writer_token: str, db_url: str, flag_server: str
) -> None:
    task = _create(
        client,
        writer_token,
        schedule_kind="condition",
        schedule_expr="* * * * *",
        payload=_pipeline(
            {"id": "check", "uses": "http.request", "with": {"url": flag_server}},
            {"id": "act", "uses": "log", "with": {"message": "it is ready"}},
            condition="${steps.check.json.ready} == true",
        ),
    )
    outcomes = []
    with worker(db_url, http_allow=("127.0.0.1",)):
        for ready in (False, True, True, False, True):
            _Flag.ready = ready
            run_id = _run_now(client, writer_token, task)
            run = _wait(client, writer_token, run_id, _final)
            assert run["status"] == "succeeded", run
            outcomes.append(len(run["steps"]) == 2)
    assert outcomes == [False, True, False, False, True]


def test_a_worker_runs_a_task_as_it_is_now_after_an_edit(
    client: TestClient, writer_token: str, db_url: str
) -> None:
    """The worker keeps tasks it has read; any change to the row (an edit, or a write
    that bumps no version) must reach the next run on the same worker."""
    say = {"id": "say", "uses": "log", "with": {"message": "${task.title}"}}
    task = _create(client, writer_token, title="first", payload=_pipeline(say))

    def said(run_id: str) -> list[str]:
        done = _wait(client, writer_token, run_id, _final)
        assert done["status"] == "succeeded", done
        logs = client.get(f"/runs/{run_id}/logs", headers=auth(writer_token)).json()["items"]
        return [line["message"] for line in logs]

    with worker(db_url):
        assert said(_run_now(client, writer_token, task)) == ["first"]
        resp = client.put(
            f"/tasks/{task['id']}",
            json={"title": "second", "payload": _pipeline(say, {**say, "id": "again"})},
            headers=auth(writer_token),
        )
        assert resp.status_code == 200, resp.text
        assert said(_run_now(client, writer_token, task)) == ["second", "second"]
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE tasks SET title = 'third' WHERE id = %s", (task["id"],))
        assert said(_run_now(client, writer_token, task)) == ["third", "third"]


def test_a_step_past_its_timeout_fails_the_run(
    client: TestClient, writer_token: str, db_url: str
) -> None:
    nap = {"id": "nap", "uses": "sleep", "with": {"seconds": 30}, "timeout_seconds": 1}
    task = _create(client, writer_token, payload=_pipeline(nap), max_retries=0)
    with worker(db_url):
        run_id = _run_now(client, writer_token, task)
        done = _wait(client, writer_token, run_id, _final, timeout=10)
    assert done["status"] == "failed", done
    assert done["error"] == "step nap: timed out after 1s"
    assert done["steps"][0]["status"] == "failed"
    assert 1000 <= done["duration_ms"] < 5000


def test_a_run_past_the_run_timeout_is_timed_out(
    client: TestClient, writer_token: str, db_url: str
) -> None:
    """PAO_RUN_TIMEOUT bounds the whole run, over steps that each keep within their own."""
    steps = [
        {"id": f"nap{i}", "uses": "sleep", "with": {"seconds": 0.8}, "timeout_seconds": 5}
        for i in range(4)
    ]
    task = _create(client, writer_token, payload=_pipeline(*steps), max_retries=0)
    with worker(db_url, run_timeout_seconds=2):
        run_id = _run_now(client, writer_token, task)
        done = _wait(client, writer_token, run_id, _final, timeout=10)
    assert done["status"] == "timed_out", done
    assert done["error"] == "the run took longer than 2s"
    assert [s["status"] for s in done["steps"]] == ["succeeded", "succeeded", "failed"]
    assert done["steps"][2]["error"] == "step nap2: stopped at the run's deadline"
    assert 2000 <= done["duration_ms"] < 4000


@pytest.mark.parametrize("fault", ["hangs", "fails"])
def test_claimed_work_waits_for_its_event_read_or_is_left_to_its_lease(
    fault: str,
    client: TestClient,
    writer_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    """A claim commits before the worker reads what its runs need (here the event). While that
    read waits on a lock the worker holds the run (its lease is renewed) and starts it after;
    if the read fails, the worker lets the run go (it does not renew a lease it will not use):
    the lease runs out, and attempt 2 runs."""
    task = _create(
        client,
        writer_token,
        schedule_kind="event",
        schedule_expr="probe.*",
        max_retries=1,
        payload=_pipeline({"id": "got", "uses": "log", "with": {"message": "${event.payload.n}"}}),
    )
    published = client.post(
        "/events", json={"type": "probe.x", "payload": {"n": 1}}, headers=auth(writer_token)
    )
    assert published.status_code == 202, published.text
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        with (
            worker(db_url, lease_seconds=3),
            scheduler(db_url, scheduler_tick_ms=100, retry_base_seconds=0.1),
        ):
            reader = until(
                lambda: db.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                    # the worker's read, not the scheduler's fan-out (which waits too)
                    " AND query LIKE '%%FROM events WHERE id = ANY%%'"
                ).fetchone(),
                "the worker to wait for the event after its claim",
            )
            if fault == "fails":
                db.execute("SELECT pg_terminate_backend(%s)", (reader[0],))
            else:
                # Held past the lease it was claimed with: it must have been renewed meanwhile.
                [(claimed_until,)] = db.execute(
                    "SELECT lease_expires_at FROM due_work WHERE task_id = %s", (task["id"],)
                ).fetchall()
                until(
                    lambda: db.execute(
                        "SELECT 1 FROM due_work WHERE task_id = %s AND state = 'running'"
                        " AND attempt = 1 AND now() > %s AND lease_expires_at > now()",
                        (task["id"], claimed_until),
                    ).fetchone(),
                    "the lease to be renewed past the one it was claimed with",
                    15,
                )
            locker.rollback()
            until(
                lambda: db.execute(
                    "SELECT 1 FROM runs WHERE task_id = %s AND status = 'succeeded'", (task["id"],)
                ).fetchone(),
                "a later attempt to succeed",
            )
    runs = db.execute(
        "SELECT attempt, status FROM runs WHERE task_id = %s ORDER BY attempt", (task["id"],)
    ).fetchall()
    assert runs == ([(1, "failed"), (2, "succeeded")] if fault == "fails" else [(1, "succeeded")])
