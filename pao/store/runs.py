"""Occurrences (`due_work`), their runs and run logs."""

from __future__ import annotations

import uuid
from datetime import datetime

from psycopg.rows import class_row

from pao.db import Conn
from pao.models import Run, RunLog
from pao.sql import QUERIES


async def enqueue(
    conn: Conn,
    *,
    task_id: uuid.UUID,
    scheduled_for: datetime,
    priority: int,
    reason: str,
    event_id: uuid.UUID | None = None,
) -> Run | None:
    """Queue an occurrence and its first run; None when that occurrence already exists."""
    cur = await conn.execute(
        QUERIES["due_work_enqueue"],
        {
            "task_id": task_id,
            "scheduled_for": scheduled_for,
            "priority": priority,
            "reason": reason,
            "event_id": event_id,
        },
    )
    work = await cur.fetchone()
    if work is None:
        return None
    async with conn.cursor(row_factory=class_row(Run)) as rcur:
        await rcur.execute(
            QUERIES["run_insert_queued"],
            {
                "due_work_id": work["id"],
                "task_id": task_id,
                "attempt": work["attempt"],
                "scheduled_for": work["scheduled_for"],
            },
        )
        run = await rcur.fetchone()
    assert run is not None
    return run


async def cancel_task_work(conn: Conn, task_id: uuid.UUID) -> tuple[int, int]:
    """Drop queued work and ask running work to stop; returns (dropped, stopping)."""
    cur = await conn.execute(QUERIES["due_work_cancel_queued_for_task"], {"task_id": task_id})
    dropped = len(await cur.fetchall())
    await conn.execute(QUERIES["run_cancel_queued_for_task"], {"task_id": task_id})
    cur = await conn.execute(
        QUERIES["due_work_request_cancel_running_for_task"], {"task_id": task_id}
    )
    stopping = len(await cur.fetchall())
    return dropped, stopping


async def cancel_run(conn: Conn, run: Run, *, reason: str) -> Run:
    """Cancel a queued run at once; ask a running one's worker to stop it."""
    await conn.execute(QUERIES["due_work_cancel_one"], {"id": run.due_work_id})
    if run.status != "queued":
        return run
    async with conn.cursor(row_factory=class_row(Run)) as cur:
        await cur.execute(QUERIES["run_cancel_queued"], {"id": run.id, "reason": reason})
        cancelled = await cur.fetchone()
    return cancelled or run


async def get_run(conn: Conn, run_id: uuid.UUID, *, owner: uuid.UUID | None) -> Run | None:
    async with conn.cursor(row_factory=class_row(Run)) as cur:
        await cur.execute(QUERIES["run_get"], {"id": run_id, "owner": owner})
        return await cur.fetchone()


async def list_runs(
    conn: Conn,
    *,
    owner: uuid.UUID | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    task_id: uuid.UUID | None = None,
    status: str | None = None,
) -> list[Run]:
    async with conn.cursor(row_factory=class_row(Run)) as cur:
        await cur.execute(
            QUERIES["run_list"],
            {
                "owner": owner,
                "limit": limit,
                "after_queued": after[0] if after else None,
                "after_id": after[1] if after else None,
                "task_id": task_id,
                "status": status,
            },
        )
        return await cur.fetchall()


async def list_run_logs(
    conn: Conn, run_id: uuid.UUID, *, after_id: int, limit: int
) -> list[RunLog]:
    async with conn.cursor(row_factory=class_row(RunLog)) as cur:
        await cur.execute(
            QUERIES["run_log_list"], {"run_id": run_id, "after_id": after_id, "limit": limit}
        )
        return await cur.fetchall()


async def queue_depth(conn: Conn) -> tuple[int, int]:
    """(queued, due now)."""
    cur = await conn.execute(QUERIES["due_work_queue_depth"])
    row = await cur.fetchone()
    assert row is not None
    return int(row["queued"]), int(row["due"])
