"""Helpers shared by the integration and acceptance tests."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import psycopg
from fastapi.testclient import TestClient
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from pao.db import connect
from pao.domain.agents import create_agent
from pao.store.queue import QueueRequest, queue_many
from pao.vocabulary import QueueReason

if TYPE_CHECKING:
    from tests.conftest import Server

# Counters that every request moves, whatever it asks: the rate limits count
# refused requests too. Every other table a rejected request leaves as it was, but
# for the heartbeats a running worker or scheduler writes every few seconds.
COUNTERS = frozenset({"rate_counters", "process_heartbeats"})


def new_agent(url: str, scopes: list[str], name: str = "agent") -> str:
    """Create an agent directly in the database; return its token."""

    async def go() -> str:
        conn = await connect(url)
        try:
            async with conn.transaction():
                return (await create_agent(conn, actor=None, name=name, scopes=scopes)).token
        finally:
            await conn.close()

    return asyncio.run(go())


def all_tables(db: psycopg.Connection[Any]) -> list[str]:
    """Every table of the schema, found in the catalog so a new one is never forgotten."""
    rows = db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    ).fetchall()
    return [str(row[0]) for row in rows]


def snapshot(db: psycopg.Connection[Any]) -> dict[str, list[Any]]:
    """Every row of every table but the counters and heartbeats, to prove a request changed
    nothing."""
    out: dict[str, list[Any]] = {}
    for table in all_tables(db):
        if table in COUNTERS:
            continue
        query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(table))
        out[table] = db.execute(query).fetchall()
    assert {"agents", "tasks", "due_work", "runs", "audit_log"} <= set(out)
    return out


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SEED_TASK: dict[str, Any] = {
    "title": "Morning Briefing",
    "description": "Daily morning briefing",
    "schedule_kind": "rrule",
    "schedule_expr": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30",
    "timezone": "Europe/Chisinau",
    "payload": {"pipeline": [{"id": "hello", "uses": "log", "with": {"message": "good morning"}}]},
}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def claims_waiting(scrape: Callable[[], str], count: int = 1) -> None:
    """Until `count` long-polling claims wait in the API process whose `/metrics` `scrape` reads."""
    until(lambda: metric(scrape(), "pao_api_claims_waiting") >= count, f"{count} waiting claims")


def create_task(client: TestClient, token: str, *steps: dict[str, Any], **fields: Any) -> str:
    """The seed task with these steps (and fields), created through the API; its id."""
    body = {**SEED_TASK, "payload": {"pipeline": list(steps)}, **fields}
    resp = client.post("/tasks", json=body, headers=auth(token))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def run_now(client: TestClient, token: str, task_id: str) -> str:
    """Queue a run of the task now; the run's id."""
    resp = client.post(f"/tasks/{task_id}/run_now", headers=auth(token))
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server of `handler` on a free loopback port, in a thread; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def soak_seconds() -> float:
    """`PAO_SOAK_SECONDS` (`make soak`): how long the load and scheduler tests keep going after
    they have seen what they wait for; 0 (the default) stops them as soon as they have."""
    return float(os.environ.get("PAO_SOAK_SECONDS") or 0)


def until(check: Callable[[], Any], what: str, timeout: float = 30, every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; that value. The wait every test does
    for an event (a row, a status, a log line, a port): no test sleeps for one."""
    deadline = time.monotonic() + timeout
    value = None
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r:.300})")


async def until_async(
    check: Callable[[], Awaitable[Any]], what: str, within: float = 30, every: float = 0.01
) -> Any:
    """`until` inside an event loop: await `check` until it returns something truthy."""
    deadline = time.monotonic() + within
    value = None
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within:g}s waiting for {what} (last: {value!r:.300})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on the port."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def until_runs_succeeded(db: psycopg.Connection[Any], count: int, timeout: float = 30) -> None:
    """Poll until `count` runs have succeeded."""
    until(
        lambda: (
            db.execute("SELECT count(*) FROM runs WHERE status = 'succeeded'").fetchone()
            == (count,)
        ),
        f"{count} runs to succeed",
        timeout,
    )


NOOP_PIPELINE = '{"pipeline": [{"id": "noop", "uses": "sleep", "with": {"seconds": 0}}]}'


def queue_noop_runs(db_url: str, db: psycopg.Connection[Any], count: int) -> uuid.UUID:
    """`count` runs of a new one-step no-op task, all due now, queued by the scheduler's
    statement (each run's rows inserted as in production); the task's id."""
    new_agent(db_url, ["admin"], name="owner")
    row = db.execute(
        "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, payload) "
        "VALUES ((SELECT id FROM agents WHERE name = 'owner'), 'noop', 'event', 'noop', 'UTC', "
        "%s::jsonb) RETURNING id",
        (NOOP_PIPELINE,),
    ).fetchone()
    assert row is not None
    task_id: uuid.UUID = row[0]
    now = datetime.now(UTC)
    requests = [
        QueueRequest(
            task_id=task_id, nominal_at=at, scheduled_for=at, priority=5, reason=QueueReason.RUN_NOW
        )
        for at in (now - timedelta(milliseconds=i) for i in range(count))
    ]

    async def queue_all() -> None:
        conn = await connect(db_url, autocommit=True)
        try:
            await queue_many(conn, requests)
        finally:
            await conn.close()

    asyncio.run(queue_all())
    return task_id


def database(
    server: Server, name: str, template: str, *, as_template: bool = False
) -> DatabaseJanitor:
    """A database copied from `template` for the `with` block (then dropped). A test file
    whose tests share a large setup builds it once in a template of its own (`as_template`)
    and gives each test a copy: a file copy, statistics and all, rather than a new fill."""
    return DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=name,
        template_dbname=template,
        as_template=as_template,
    )


def in_table(relation: object, table: str) -> bool:
    """Whether a relation a plan names is `table` or one of its monthly or DEFAULT partitions
    (runs, run_logs and occurrences are partitioned: version_0020.sql)."""
    return isinstance(relation, str) and (
        relation == table
        or re.fullmatch(rf"{table}_(p\d{{4}}_\d{{2}}|default)", relation) is not None
    )


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, the root first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def queue_runs(db: psycopg.Connection[Any], task_id: object, count: int) -> None:
    """`count` queued occurrences of the task with their runs, a second apart, newest now."""
    db.execute(
        "WITH w AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason, run_id) "
        "SELECT %s, now() - i * interval '1 second', now(), 'run_now', pao_uuid_v7() "
        "FROM generate_series(1, %s) i RETURNING id, task_id, scheduled_for, run_id) "
        "INSERT INTO runs (id, due_work_id, task_id, scheduled_for, queued_at) "
        "SELECT run_id, id, task_id, scheduled_for, scheduled_for FROM w",
        (task_id, count),
    )
