"""`due_work` and `runs`, for workers: claim, renew, finish, retry, hand back.

Every write names the attempt and the lease owner, so a worker that lost its
lease (the scheduler rescued the work) changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from pao.db import Conn, field_names, from_row, model_row, pipelined_transaction
from pao.models import Event, Task
from pao.sql import QUERIES
from pao.store import runs
from pao.store.events import AudienceValue, audience_columns
from pao.vocabulary import QueueReason, RunStatus

# Text to member by a dict lookup, not `QueueReason(text)`: a claimed row is built on the
# worker's hot path.
_QUEUE_REASONS: dict[str, QueueReason] = {r.value: r for r in QueueReason}


@dataclass(frozen=True)
class Claimed:
    id: int
    task_id: uuid.UUID
    scheduled_for: datetime
    attempt: int
    event_id: uuid.UUID | None
    reason: QueueReason
    run_id: uuid.UUID
    started_at: datetime | None = None
    # The run's own saved steps when it is claimed again (handed back, or continued after a
    # remote step ended); None for a run that never ran a step.
    saved_steps: list[Any] | None = None

    def __post_init__(self) -> None:
        """psycopg gives `reason` as text; the row holds the member."""
        object.__setattr__(self, "reason", _QUEUE_REASONS[self.reason])


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


Versioned = tuple[str, Task]
"""A task with its row version: a worker reuses the task while the version stays the same."""


@dataclass(frozen=True)
class Started:
    """What the one-statement claim started, and whether keyed work waits for its own claim."""

    claimed: list[tuple[Claimed, str]]  # each with its task's row version
    keyed: bool


async def claim_unkeyed(conn: Conn, *, worker_id: str, limit: int, lease_seconds: float) -> Started:
    """Claim due work under no concurrency key in one statement (one round trip in autocommit)."""
    # Plain tuples, picked by column position: a dict per row and a dict of arguments per
    # run were a visible share of a draining worker's CPU.
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        QUERIES["due_work_claim"],
        {"limit": limit, "worker_id": worker_id, "lease_seconds": lease_seconds},
    )
    rows = await cur.fetchall()
    names = [column.name for column in cur.description or ()]
    kind, version = names.index("kind"), names.index("task_version")
    fields = itemgetter(*(names.index(n) for n in field_names(Claimed)))
    claimed: list[tuple[Claimed, str]] = []
    keyed = False
    for row in rows:
        if row[kind] == "keyed":
            keyed = True
            continue
        claimed.append((Claimed(*fields(row)), row[version]))
    return Started(claimed, keyed)


@dataclass(frozen=True)
class Claim:
    """What one claim started, with the task and event rows its runs need."""

    claimed: list[Claimed]
    tasks: dict[uuid.UUID, Versioned]
    events: dict[uuid.UUID, Event]


async def claim(conn: Conn, *, worker_id: str, limit: int, lease_seconds: float) -> Claim:
    """Lock due work, then start what concurrency keys allow, in a transaction of its own.

    Two statements: the second needs a snapshot taken after the first one's key locks, so
    that it counts every run another claim of the same key has started. Pipelined, the
    claim costs two round trips: BEGIN with the first statement, then the second with the
    task and event reads and the COMMIT. `conn` must be in autocommit: the transaction is
    opened here, so that its BEGIN travels with the first statement.
    """
    async with pipelined_transaction(conn):
        cur = await conn.execute(
            QUERIES["due_work_claim_lock"], {"limit": limit, "lock_space": CLAIM_LOCK_SPACE}
        )
        locked = await cur.fetchall()
        started = conn.cursor(row_factory=model_row(Claimed))
        if locked:
            await started.execute(
                QUERIES["due_work_claim_start"],
                {
                    "ids": [r["id"] for r in locked],
                    "worker_id": worker_id,
                    "lease_seconds": lease_seconds,
                },
            )
            rows = await _send_rows_for(
                conn,
                list({r["task_id"] for r in locked}),
                [r["event_id"] for r in locked if r["event_id"] is not None],
            )
    if not locked:
        return Claim([], {}, {})
    tasks, events = await rows()
    return Claim(await started.fetchall(), tasks, events)


async def rows_for(
    conn: Conn, task_ids: list[uuid.UUID], event_ids: list[uuid.UUID]
) -> tuple[dict[uuid.UUID, Versioned], dict[uuid.UUID, Event]]:
    """Tasks (with their row versions) and events of claimed work, in one round trip."""
    async with conn.pipeline():
        rows = await _send_rows_for(conn, task_ids, event_ids)
    return await rows()


async def _send_rows_for(
    conn: Conn, task_ids: list[uuid.UUID], event_ids: list[uuid.UUID]
) -> Callable[[], Awaitable[tuple[dict[uuid.UUID, Versioned], dict[uuid.UUID, Event]]]]:
    """Queue the reads in the connection's pipeline; the returned call reads their results."""
    tasks = conn.cursor()
    if task_ids:
        await tasks.execute(QUERIES["task_get_many"], {"ids": task_ids})
    events = conn.cursor(row_factory=model_row(Event))
    if event_ids:
        await events.execute(QUERIES["event_get_many"], {"ids": event_ids})

    async def results() -> tuple[dict[uuid.UUID, Versioned], dict[uuid.UUID, Event]]:
        found: dict[uuid.UUID, Versioned] = {}
        for r in await tasks.fetchall() if task_ids else []:
            found[r["id"]] = (r["row_version"], from_row(Task, r))
        return found, ({e.id: e for e in await events.fetchall()} if event_ids else {})

    return results


async def next_due(conn: Conn) -> float | None:
    """Seconds until the earliest queued work falls due by the database's clock (0 or less:
    due already); None when nothing waits."""
    cur = await conn.execute(QUERIES["due_work_next_due"])
    row = await cur.fetchone()
    if row is None or row["in_seconds"] is None:
        return None
    seconds: float = row["in_seconds"]
    return seconds


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
    """How one held attempt ended, for `finish_many` (its run is found by the attempt)."""

    lease: Lease
    status: RunStatus
    steps: list[Any]
    error: str | None


async def finish_many(
    conn: Conn, worker_id: str, endings: list[Ending]
) -> Callable[[], Awaitable[set[int]]]:
    """End attempts in final states in one statement; the returned call reads back the ids of
    those this worker still held. Sent now, read later: in a pipeline, the COMMIT can travel
    with it."""
    cur = conn.cursor(row_factory=tuple_row)
    if endings:
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
                            "steps": e.steps,
                            "error": e.error,
                        }
                        for e in endings
                    ]
                ),
            },
        )

    async def held() -> set[int]:
        return {row[0] for row in await cur.fetchall()} if endings else set()

    return held


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
        {"id": run_id, "status": RunStatus.FAILED, "steps": Jsonb(steps), "error": error},
    )
    await runs.insert_next_attempt(conn, row)
    return True


async def hand_back(
    conn: Conn, lease: Lease, *, run_id: uuid.UUID, steps: list[Any] | None = None
) -> bool:
    """Give the work back unspent (shutdown), keeping `steps` (those that succeeded: the
    checkpoints its next claim resumes after); False if the lease was lost."""
    cur = await conn.execute(QUERIES["due_work_hand_back"], lease.params())
    if await cur.fetchone() is None:
        return False
    await conn.execute(QUERIES["run_reset"], {"id": run_id, "steps": Jsonb(steps or [])})
    return True


async def wait(conn: Conn, lease: Lease, *, seconds: float) -> bool | None:
    """Move a held occurrence to `waiting` for `seconds` at most, giving up its lease (the
    caller's transaction offers its remote step). True: waiting; False: a cancel was asked
    for (it stays running, held); None: the lease was lost."""
    cur = await conn.execute(QUERIES["due_work_wait"], {**lease.params(), "seconds": seconds})
    row = await cur.fetchone()
    if row is None:
        return None
    return bool(row["waiting"])


async def hold_lease(conn: Conn, lease: Lease) -> bool:
    """In the caller's transaction, keep the lease until commit (a rescue waits); False if
    it was lost already. A step writing rows of its own (an asset) calls it before commit."""
    cur = await conn.execute(QUERIES["due_work_hold_lease"], lease.params())
    return await cur.fetchone() is not None


async def save_waiting_steps(conn: Conn, *, run_id: uuid.UUID, steps: list[Any]) -> None:
    """The steps of a run that now waits for a remote step (the last one, `waiting`)."""
    await conn.execute(QUERIES["run_wait"], {"id": run_id, "steps": Jsonb(steps)})


async def previous_steps(
    conn: Conn, *, due_work_id: int, attempt: int
) -> tuple[int, list[Any]] | None:
    """The latest earlier attempt of an occurrence that saved steps: (attempt, steps)."""
    cur = await conn.execute(
        QUERIES["run_previous_steps"], {"due_work_id": due_work_id, "attempt": attempt}
    )
    row = await cur.fetchone()
    return None if row is None else (int(row["attempt"]), list(row["steps"]))


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
    conn: Conn,
    *,
    type: str,
    payload: Any,
    run_id: uuid.UUID,
    idempotency_key: str,
    published_by: uuid.UUID,
    hop: int,
    audience: AudienceValue = None,
) -> uuid.UUID | None:
    """Store a step's event for the scheduler to fan out; None if this key already published.

    `published_by` is the owner of the run's task, and `hop` one more than the hop of the
    event that triggered the run (0 if none did): see `events.step_origin`."""
    cur = await conn.execute(
        QUERIES["event_insert_from_step"],
        {
            "type": type,
            "payload": Jsonb(payload),
            "source_run_id": run_id,
            "idempotency_key": idempotency_key,
            "published_by": published_by,
            "hop": hop,
            **audience_columns(audience),
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
