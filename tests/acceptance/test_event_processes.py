"""Events under their rules, with real `pao api`, `pao scheduler` and `pao worker` processes:
a step does only what its owner may, and a loop of events ends at PAO_EVENT_MAX_HOPS."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.acceptance.procs import Process, free_port, wait_ready
from tests.acceptance.running import finished_run
from tests.helpers import SEED_TASK, auth, new_agent, until

BASIC = ["tasks:read", "tasks:write", "runs:read"]
EMIT = {"id": "emit", "uses": "events.publish", "with": {"type": "ping"}}


@contextmanager
def _services(db_url: str, log_dir: Path, **env: str) -> Iterator[str]:
    """An API, a scheduler (ticking fast) and a worker on the test's database; the API's URL."""
    port = free_port()
    base_env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_PORT": str(port),
        "PAO_LOG_LEVEL": "info",
        "PAO_SCHEDULER_TICK_MS": "100",
        "PAO_RETRY_BASE_SECONDS": "0",
        **env,
    }
    procs = [
        Process([sys.executable, "-m", "pao", name], base_env, log_dir / f"{name}.log")
        for name in ("api", "scheduler", "worker")
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, procs[0])
        yield base
    finally:
        for proc in procs:
            proc.kill()


def _post(base: str, path: str, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, headers=auth(token), timeout=10)


def _create(base: str, token: str, *steps: dict[str, Any], **fields: Any) -> str:
    resp = _post(
        base, "/tasks", token, {**SEED_TASK, "payload": {"pipeline": list(steps)}, **fields}
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _count(db: psycopg.Connection[Any], query: str, *args: object) -> int:
    row = db.execute(query, args).fetchone()
    assert row is not None
    return int(row[0])


def test_a_step_cannot_publish_what_its_owner_may_not(db_url: str, tmp_path: Path) -> None:
    admin = new_agent(db_url, ["admin"], name="root")
    plain = new_agent(db_url, BASIC, name="plain")
    loser = new_agent(db_url, [*BASIC, "events:publish"], name="loser")
    other = new_agent(db_url, [*BASIC, "events:publish"], name="other")
    with psycopg.connect(db_url, autocommit=True) as db, _services(db_url, tmp_path) as base:
        listener = _create(
            base,
            other,
            {"id": "got", "uses": "log", "with": {"message": "${event.payload}"}},
            schedule_kind="event",
            schedule_expr="*",
        )
        # Without events:publish, the step is refused before any run_now could run it.
        refused = _post(base, "/tasks", plain, {**SEED_TASK, "payload": {"pipeline": [EMIT]}})
        assert refused.status_code == 403, refused.text
        assert "'events:publish'" in refused.json()["detail"]

        # With it, then without: the run's step fails for good, and nothing is published.
        task_id = _create(base, loser, EMIT, max_retries=3, backoff_strategy="fixed")
        loser_id = db.execute("SELECT id FROM agents WHERE name = 'loser'").fetchone()
        assert loser_id is not None
        taken = httpx.put(
            f"{base}/agents/{loser_id[0]}", json={"scopes": BASIC}, headers=auth(admin), timeout=10
        )
        assert taken.status_code == 200, taken.text
        run = _post(base, f"/tasks/{task_id}/run_now", loser, {})
        assert run.status_code == 202, run.text
        ended = finished_run(base, loser, run.json()["id"])
        assert ended["status"] == "failed", ended
        assert "'events:publish'" in ended["error"], ended["error"]
        # A later run of the listener's owner shows the scheduler is dispatching meanwhile.
        _post(base, "/events", other, {"type": "marker"})
        until(
            lambda: _count(db, "SELECT count(*) FROM runs WHERE task_id = %s", listener) == 1,
            "the listener to hear its own owner's marker",
        )
    assert db_rows(db_url, "SELECT state, attempt FROM due_work WHERE task_id = %s", task_id) == [
        ("failed", 1)
    ]
    assert db_rows(db_url, "SELECT type FROM events") == [("marker",)]
    assert db_rows(db_url, "SELECT count(*) FROM runs WHERE task_id = %s", listener) == [(1,)]


def db_rows(db_url: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(query, args).fetchall()


def test_a_loop_of_events_ends_at_the_hop_limit(db_url: str, tmp_path: Path) -> None:
    """`boom` publishes `boom` twice. With PAO_EVENT_MAX_HOPS=2, hops 0 to 2 fire 1 + 2 + 4
    runs, and the 8 events of hop 3 fire nothing, each leaving a hop_limit record."""
    writer = new_agent(db_url, [*BASIC, "events:publish"], name="writer")
    emit = {"uses": "events.publish", "with": {"type": "boom"}}
    db = psycopg.connect(db_url, autocommit=True)
    with db, _services(db_url, tmp_path, PAO_EVENT_MAX_HOPS="2") as base:
        boom = _create(
            base,
            writer,
            {"id": "a", **emit},
            {"id": "b", **emit},
            schedule_kind="event",
            schedule_expr="boom",
        )
        assert _post(base, "/events", writer, {"type": "boom"}).status_code == 202

        def settled() -> bool:
            done = _count(db, "SELECT count(*) FROM events WHERE dispatched_at IS NOT NULL")
            busy = _count(db, "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')")
            return done == 15 and busy == 0

        until(settled, "the loop to stop", timeout=60)
        records = httpx.get(
            f"{base}/tasks/{boom}/occurrences",
            params={"past": "true", "count": 100},
            headers=auth(writer),
            timeout=10,
        ).json()["items"]
    assert db_rows(db_url, "SELECT status, count(*) FROM runs GROUP BY status") == [
        ("succeeded", 7)
    ]
    assert db_rows(db_url, "SELECT hop, count(*) FROM events GROUP BY hop ORDER BY hop") == [
        (0, 1),
        (1, 2),
        (2, 4),
        (3, 8),
    ]
    stopped = [r for r in records if r["decision"] == "hop_limit"]
    assert len(stopped) == 8
    assert all("PAO_EVENT_MAX_HOPS=2" in r["detail"] for r in stopped), stopped
