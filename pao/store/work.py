"""What workers do to `due_work` and runs: claim, renew, finish, retry, hand back.

Every write names the attempt and the lease owner, so a worker that lost its
lease (the scheduler rescued the work) changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, model_row
from pao.models import Event, Task
from pao.sql import QUERIES
from pao.store import runs


@dataclass(frozen=True)
class Claimed:
    id: int
    task_id: uuid.UUID
    scheduled_for: datetime
    attempt: int
    event_id: uuid.UUID | None
    reason: str
    run_id: uuid.UUID
    started_at: datetime | None = None


@dataclass(frozen=True)
class Lease:
    """Which attempt of which work a worker holds."""

    due_work_id: int
    attempt: int
    worker_id: str

    def params(self) -> dict[str, Any]:
        return {"id": self.due_work_id, "attempt": self.attempt, "worker_id": self.worker_id}


CLAIM_LOCK_SPACE = 0x5041_4F01
"""First key of the two-key advisory locks that serialise claims of one concurrency key."""


async def claim(conn: Conn, *, worker_id: str, limit: int, lease_seconds: float) -> list[Claimed]:
    """Lock due work, then start what concurrency keys allow; the caller's transaction commits.

    Two statements: the second needs a snapshot taken after the first one's key locks, so
    that it counts every run another claim of the same key has started.
    """
    cur = await conn.execute(
        QUERIES["due_work_claim_lock"], {"limit": limit, "lock_space": CLAIM_LOCK_SPACE}
    )
    ids = [row["id"] for row in await cur.fetchall()]
    if not ids:
        return []
    async with conn.cursor(row_factory=model_row(Claimed)) as claimed:
        await claimed.execute(
            QUERIES["due_work_claim_start"],
            {"ids": ids, "worker_id": worker_id, "lease_seconds": lease_seconds},
        )
        return await claimed.fetchall()


async def tasks_of(conn: Conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, Task]:
    async with conn.cursor(row_factory=model_row(Task)) as cur:
        await cur.execute(QUERIES["task_get_many"], {"ids": ids})
        return {t.id: t for t in await cur.fetchall()}


async def events_of(conn: Conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, Event]:
    if not ids:
        return {}
    async with conn.cursor(row_factory=model_row(Event)) as cur:
        await cur.execute(QUERIES["event_get_many"], {"ids": ids})
        return {e.id: e for e in await cur.fetchall()}


async def next_due(conn: Conn) -> datetime | None:
    cur = await conn.execute(QUERIES["due_work_next_due"])
    row = await cur.fetchone()
    return row["at"] if row else None


async def renew(
    conn: Conn, *, worker_id: str, ids: list[int], lease_seconds: float
) -> dict[int, tuple[int, bool, bool]]:
    """Renew leases; returns {id: (attempt, cancel_requested, renewed)} for those still held.

    `renewed` is False for a row another transaction holds locked: still this worker's,
    but its lease was not extended this time.
    """
    if not ids:
        return {}
    cur = await conn.execute(
        QUERIES["due_work_renew_leases"],
        {"worker_id": worker_id, "ids": ids, "lease_seconds": lease_seconds},
    )
    return {
        r["id"]: (r["attempt"], r["cancel_requested"], r["renewed"]) for r in await cur.fetchall()
    }


async def wait_for_locks_at_most(conn: Conn, seconds: float) -> None:
    """In this transaction, fail with `LockNotAvailable` rather than wait longer for a lock."""
    await conn.execute(
        QUERIES["due_work_wait_for_locks_at_most"], {"timeout": f"{int(seconds * 1000)}ms"}
    )


@dataclass(frozen=True)
class Ending:
    """How one held attempt ended, for `finish_many`."""

    lease: Lease
    run_id: uuid.UUID
    status: str
    steps: list[Any]
    error: str | None


@dataclass(frozen=True)
class Finished:
    id: int
    task_id: uuid.UUID
    claim_key: str | None


async def finish_many(conn: Conn, worker_id: str, endings: list[Ending]) -> list[Finished]:
    """End attempts in final states in one statement; returns those this worker still held."""
    if not endings:
        return []
    async with conn.cursor(row_factory=model_row(Finished)) as cur:
        await cur.execute(
            QUERIES["due_work_finish_many"],
            {
                "worker_id": worker_id,
                "endings": Jsonb(
                    [
                        {
                            "id": e.lease.due_work_id,
                            "attempt": e.lease.attempt,
                            "state": e.status,
                            "run_id": str(e.run_id),
                            "steps": e.steps,
                            "error": e.error,
                        }
                        for e in endings
                    ]
                ),
            },
        )
        return await cur.fetchall()


async def retry(
    conn: Conn,
    lease: Lease,
    *,
    run_id: uuid.UUID,
    delay_seconds: float,
    steps: list[Any],
    error: str,
) -> bool:
    """Fail this attempt and queue the next; False if the lease was lost."""
    cur = await conn.execute(
        QUERIES["due_work_retry"], {**lease.params(), "delay_seconds": delay_seconds}
    )
    row = await cur.fetchone()
    if row is None:
        return False
    await conn.execute(
        QUERIES["run_finish"],
        {"id": run_id, "status": "failed", "steps": Jsonb(steps), "error": error},
    )
    await runs.insert_next_attempt(conn, row)
    return True


async def hand_back(conn: Conn, lease: Lease, *, run_id: uuid.UUID) -> bool:
    """Give the work back unspent (shutdown); False if the lease was lost."""
    cur = await conn.execute(QUERIES["due_work_hand_back"], lease.params())
    if await cur.fetchone() is None:
        return False
    await conn.execute(QUERIES["run_reset"], {"id": run_id})
    return True


async def save_progress(
    conn: Conn, worker_id: str, progress: list[tuple[Lease, uuid.UUID, list[Any]]]
) -> None:
    """Write the steps so far of several runs (lease, run id, steps) in one statement."""
    if not progress:
        return
    await conn.execute(
        QUERIES["run_save_steps_many"],
        {
            "worker_id": worker_id,
            "progress": Jsonb(
                [
                    {
                        "run_id": str(run_id),
                        "id": lease.due_work_id,
                        "attempt": lease.attempt,
                        "steps": steps,
                    }
                    for lease, run_id, steps in progress
                ]
            ),
        },
    )


async def log(
    conn: Conn, lease: Lease, *, run_id: uuid.UUID, level: str, step_id: str | None, message: str
) -> int | None:
    """Append a log line while the lease holds; its id, or None if the lease was lost."""
    cur = await conn.execute(
        QUERIES["run_log_append"],
        {
            "run_id": run_id,
            "level": level,
            "step_id": step_id,
            "message": message,
            "due_work_id": lease.due_work_id,
            "attempt": lease.attempt,
            "worker_id": lease.worker_id,
        },
    )
    row = await cur.fetchone()
    return int(row["id"]) if row else None


async def complete_tasks_if_done(conn: Conn, task_ids: list[uuid.UUID]) -> None:
    if task_ids:
        await conn.execute(QUERIES["task_complete_if_done"], {"ids": task_ids})


async def set_condition_state(conn: Conn, task_id: uuid.UUID, state: bool) -> None:
    await conn.execute(QUERIES["task_set_condition_state"], {"id": task_id, "state": state})


async def publish_from_step(
    conn: Conn, *, type: str, payload: Any, run_id: uuid.UUID, idempotency_key: str
) -> uuid.UUID | None:
    """Store a step's event for the scheduler to fan out; None if this key already published."""
    cur = await conn.execute(
        QUERIES["event_insert_from_step"],
        {
            "type": type,
            "payload": Jsonb(payload),
            "source_run_id": run_id,
            "idempotency_key": idempotency_key,
        },
    )
    row = await cur.fetchone()
    return row["id"] if row else None


async def notify_workers(conn: Conn) -> None:
    await conn.execute(QUERIES["due_work_notify"])


async def event_at(conn: Conn, task_id: uuid.UUID, at: datetime) -> uuid.UUID | bool | None:
    """The event whose occurrence of this task is at `at`; None for one of no event, False
    when there is no occurrence then."""
    cur = await conn.execute(QUERIES["due_work_event_at"], {"task_id": task_id, "at": at})
    row = await cur.fetchone()
    if row is None:
        return False
    event_id: uuid.UUID | None = row["event_id"]
    return event_id
