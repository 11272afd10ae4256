"""Helpers shared by the integration and acceptance tests."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from pao.agents import create_agent
from pao.db import connect

# Tables whose contents a rejected request must leave exactly as they were.
TABLES = (
    "agents",
    "tasks",
    "due_work",
    "runs",
    "run_logs",
    "events",
    "audit_log",
    "idempotency_keys",
)


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


def snapshot(db: psycopg.Connection[Any]) -> dict[str, list[Any]]:
    """Every row of every table, to prove a request changed nothing."""
    out: dict[str, list[Any]] = {}
    for table in TABLES:
        rows = db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        out[table] = rows
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
