"""`tasks`: tasks as the API and the scheduler read and change them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, from_row, model_row
from pao.models import Task
from pao.sql import QUERIES
from pao.vocabulary import TaskStatus
from pao.zones import tzdata_version


def _params(fields: dict[str, Any]) -> dict[str, Any]:
    params = dict(fields)
    params["payload"] = Jsonb(params["payload"])
    # What next_run_at was computed with: this process's release, unless the caller kept a
    # stored time (and so the release that computed it).
    params.setdefault("tzdata_version", tzdata_version())
    return params


async def insert_task(conn: Conn, fields: dict[str, Any]) -> Task:
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        await cur.execute(QUERIES["task_insert"], _params(fields))
        task = await cur.fetchone()
    assert task is not None
    return task


async def get_task(
    conn: Conn, task_id: uuid.UUID, *, owner: uuid.UUID | None, for_update: bool = False
) -> Task | None:
    """The task, if `owner` (None: anyone) may see it."""
    query = QUERIES["task_get_for_update" if for_update else "task_get"]
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        await cur.execute(query, {"id": task_id, "owner": owner})
        return await cur.fetchone()


async def list_tasks(
    conn: Conn,
    *,
    owner: uuid.UUID | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    status: TaskStatus | None = None,
    created_by: uuid.UUID | None = None,
    schedule_kind: str | None = None,
) -> list[Task]:
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        await cur.execute(
            QUERIES["task_list"],
            {
                "owner": owner,
                "limit": limit,
                "after_created": after[0] if after else None,
                "after_id": after[1] if after else None,
                "status": status,
                "created_by": created_by,
                "schedule_kind": schedule_kind,
            },
            prepare=False,  # planned for its own filters, as run_list (pao/sql/runs.sql) says
        )
        return await cur.fetchall()


async def update_task(conn: Conn, task_id: uuid.UUID, fields: dict[str, Any]) -> Task:
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        await cur.execute(QUERIES["task_update"], {**_params(fields), "id": task_id})
        task = await cur.fetchone()
    assert task is not None
    return task


async def set_task_state(
    conn: Conn, task_id: uuid.UUID, *, status: TaskStatus, next_run_at: datetime | None
) -> Task:
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        await cur.execute(
            QUERIES["task_set_state"],
            {
                "id": task_id,
                "status": status,
                "next_run_at": next_run_at,
                "tzdata_version": tzdata_version(),
            },
        )
        task = await cur.fetchone()
    assert task is not None
    return task


async def owner_exists(conn: Conn, agent_id: uuid.UUID) -> bool:
    cur = await conn.execute(QUERIES["task_owner_exists"], {"id": agent_id})
    return await cur.fetchone() is not None


async def list_tasks_matching_event(
    conn: Conn, event_type: str, *, owners: list[uuid.UUID] | None = None
) -> list[Task]:
    """Active event tasks matching `event_type`: of every agent, or of `owners` only."""
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        if owners is None:
            await cur.execute(QUERIES["task_list_matching_event"], {"type": event_type})
        else:
            await cur.execute(
                QUERIES["task_list_matching_event_of"], {"type": event_type, "owners": owners}
            )
        return await cur.fetchall()


async def lock_due(conn: Conn, *, horizon: datetime, limit: int) -> list[Task]:
    """Active tasks due before `horizon`, locked; other schedulers skip them."""
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        await cur.execute(QUERIES["task_lock_due"], {"horizon": horizon, "limit": limit})
        return await cur.fetchall()


async def advance_many(
    conn: Conn, advances: list[tuple[uuid.UUID, datetime | None, TaskStatus]]
) -> None:
    """Set (task id, next_run_at, status) for each materialised task."""
    if advances:
        batch = [
            {"id": str(i), "next_run_at": n.isoformat() if n else None, "status": s}
            for i, n, s in advances
        ]
        await conn.execute(
            QUERIES["task_advance_many"],
            {"batch": Jsonb(batch), "tzdata_version": tzdata_version()},
        )


async def lock_stale_zones(conn: Conn, *, version: str, limit: int) -> list[tuple[Task, bool]]:
    """Up to `limit` active tasks whose next fire time a tzdata release older than `version`
    computed, locked (other schedulers skip them); each with whether a snooze is pending."""
    cur = await conn.execute(QUERIES["task_lock_stale_zones"], {"version": version, "limit": limit})
    return [(from_row(Task, row), bool(row["snoozed"])) for row in await cur.fetchall()]


async def retime_many(
    conn: Conn, retimed: list[tuple[uuid.UUID, datetime]], *, version: str
) -> None:
    """Set each (task id, next_run_at), as computed with tzdata `version`, which they record."""
    if retimed:
        batch = [{"id": str(i), "next_run_at": n.isoformat()} for i, n in retimed]
        await conn.execute(QUERIES["task_retime_many"], {"batch": Jsonb(batch), "version": version})


async def owner_load(
    conn: Conn, owner: uuid.UUID, *, exclude: uuid.UUID | None = None
) -> tuple[int, int]:
    """(live tasks, their summed hourly peak) of `owner`, other than `exclude`.

    Takes the owner's quota lock until the transaction ends.
    """
    cur = await conn.execute(QUERIES["task_owner_load"], {"owner": owner, "exclude": exclude})
    row = await cur.fetchone()
    assert row is not None
    return int(row["tasks"]), int(row["hourly"])
