"""`runs` and `run_logs` (with their `due_work` rows): as agents, rescue and retention see them."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, model_row
from pao.models import Run, RunLog
from pao.sql import QUERIES
from pao.store import remote_steps
from pao.vocabulary import LIVE_RUN_STATUSES, BackoffStrategy, RunStatus, WorkState

# Run states found from their occurrences rather than from the history of runs.
LIVE = LIVE_RUN_STATUSES
# How many of the newest runs (after the cursor) an owner's page is first looked for among:
# about a millisecond's read, which holds a page of 50 whenever one run in 20 of them is theirs.
# Written out in run_list_owned_recent and run_list_owned_cost (their comment says why).
OWNED_SCAN = 1000
# An owner's tasks are counted up to this many, to weigh a walk task by task against one
# through every agent's runs (beyond it, task by task is taken only when the walk has no bound).
OWNED_TASKS_COUNTED = 10_000


async def cancel_task_work(conn: Conn, task_id: uuid.UUID) -> tuple[list[int], int]:
    """Drop queued and waiting work and ask running work to stop; returns (dropped ids,
    number stopping). The remote steps of waiting runs are cancelled: their holders' next
    call is a 409."""
    cur = await conn.execute(QUERIES["due_work_cancel_queued_for_task"], {"task_id": task_id})
    dropped = [row["id"] for row in await cur.fetchall()]
    if dropped:
        # Their runs by occurrence: by task, the statement read every run the task ever had.
        cur = await conn.execute(
            QUERIES["run_cancel_queued_for_work"],
            {"due_work_ids": dropped, "reason": "task cancelled"},
        )
        for row in await cur.fetchall():
            await remote_steps.cancel_for_run(conn, row["id"])
    cur = await conn.execute(
        QUERIES["due_work_request_cancel_running_for_task"], {"task_id": task_id}
    )
    stopping = len(await cur.fetchall())
    return dropped, stopping


async def refresh_queued(conn: Conn, task_id: uuid.UUID) -> None:
    """Carry a task's new priority and concurrency key to its occurrences still waiting."""
    await conn.execute(QUERIES["due_work_refresh_queued"], {"task_id": task_id})


async def take_back_scheduled(
    conn: Conn, task_id: uuid.UUID, *, reason: str
) -> list[tuple[int, datetime]]:
    """Cancel the task's scheduled occurrences that are queued but not started.

    The scheduler writes occurrences a little before they are due; pause, snooze
    and a schedule change must take those back. Returns (due_work id, scheduled_for).
    """
    cur = await conn.execute(QUERIES["due_work_drop_queued_schedule"], {"task_id": task_id})
    taken = [(row["id"], row["scheduled_for"]) for row in await cur.fetchall()]
    if taken:
        await conn.execute(
            QUERIES["run_cancel_queued_for_work"],
            {"due_work_ids": [t[0] for t in taken], "reason": reason},
        )
    return taken


async def cancel_run(conn: Conn, run: Run, *, reason: str) -> Run:
    """Cancel a queued run, or one waiting for a remote step (and that step), at once; ask
    a running one's worker to stop it. `run` is locked with its occurrence."""
    cur = await conn.execute(QUERIES["due_work_cancel_one"], {"id": run.due_work_id})
    work = await cur.fetchone()
    if run.status is RunStatus.QUEUED:
        statement = "run_cancel_queued"
    elif (
        run.status is RunStatus.RUNNING
        and work is not None
        and work["state"] == WorkState.CANCELLED
    ):
        statement = "run_cancel_waiting"  # no worker held it: it was waiting
        await remote_steps.cancel_for_run(conn, run.id)
    else:
        return run
    async with conn.cursor(row_factory=model_row(Run)) as cur:
        await cur.execute(QUERIES[statement], {"id": run.id, "reason": reason})
        cancelled = await cur.fetchone()
    return cancelled or run


async def get_run(
    conn: Conn, run_id: uuid.UUID, *, owner: uuid.UUID | None, for_update: bool = False
) -> Run | None:
    query = QUERIES["run_get_for_update" if for_update else "run_get"]
    async with conn.cursor(row_factory=model_row(Run)) as cur:
        await cur.execute(query, {"id": run_id, "owner": owner})
        return await cur.fetchone()


async def get_runs(conn: Conn, ids: list[uuid.UUID], *, owner: uuid.UUID | None) -> list[Run]:
    async with conn.cursor(row_factory=model_row(Run)) as cur:
        await cur.execute(QUERIES["run_get_many"], {"ids": ids, "owner": owner})
        return await cur.fetchall()


async def list_logs_of_runs(
    conn: Conn, run_ids: list[uuid.UUID], *, after_id: int, limit: int
) -> list[RunLog]:
    async with conn.cursor(row_factory=model_row(RunLog)) as cur:
        await cur.execute(
            QUERIES["run_log_list_many"],
            {"run_ids": run_ids, "after_id": after_id, "limit": limit},
        )
        return await cur.fetchall()


async def list_runs(
    conn: Conn,
    *,
    owner: uuid.UUID | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    task_id: uuid.UUID | None = None,
    status: RunStatus | None = None,
) -> list[Run]:
    """A page of runs, newest first; `owner` None lists every agent's runs.

    An owner's page over all their tasks is looked for first among the newest runs, where an
    agent's own recent runs usually are; when that window holds less than a page, the rest
    is found task by task (the cost follows the owner's tasks, not everyone's history) or by
    walking on through every agent's runs, whichever `owned_way` expects to read less.
    """
    params: dict[str, Any] = {
        "owner": owner,
        "limit": limit,
        "after_queued": after[0] if after else None,
        "after_id": after[1] if after else None,
        "task_id": task_id,
        "status": status,
        "tasks_cap": OWNED_TASKS_COUNTED,
    }
    if status in LIVE:
        page = await _runs(conn, "run_list_live", {**params, "work_state": status})
        if status is RunStatus.RUNNING:
            # Runs waiting for a remote step are running too; their occurrences wait.
            page += await _runs(conn, "run_list_live", {**params, "work_state": WorkState.WAITING})
            page.sort(key=lambda r: (r.queued_at, r.id), reverse=True)
            del page[limit:]
        return page
    if owner is None or task_id is not None:
        return await _runs(conn, "run_list", params, prepare=False)
    page = await _runs(conn, "run_list_owned_recent", params)
    if len(page) == limit:
        return page
    cost = await conn.execute(QUERIES["run_list_owned_cost"], params)
    counts = await cost.fetchone()
    assert counts is not None
    way = owned_way(
        found=len(page),
        window=counts["window_runs"],
        tasks=counts["tasks"],
        limit=limit,
        status=status,
    )
    # Never prepared: see run_list's comment.
    return page if way is None else await _runs(conn, way, params, prepare=False)


async def _runs(
    conn: Conn, statement: str, params: dict[str, Any], *, prepare: bool | None = None
) -> list[Run]:
    async with conn.cursor(row_factory=model_row(Run)) as cur:
        await cur.execute(QUERIES[statement], params, prepare=prepare)
        return await cur.fetchall()


def owned_way(
    *, found: int, window: int, tasks: int, limit: int, status: RunStatus | None
) -> str | None:
    """How to go on after an owner's short page among the newest runs.

    None when that window held every run after the cursor: the short page is whole. Else
    the statement expected to read fewer runs: walking every agent's runs newest first reads
    about `OWNED_SCAN / found` runs for each run of the page (without bound when the window
    held none of the owner's), going task by task up to a page per task. A status filter is
    walked: the planner cannot tell how rare a status is within one task's runs, and may
    then scan them all once per task.
    """
    if window < OWNED_SCAN:
        return None
    if status is not None:
        return "run_list"
    walk = limit * OWNED_SCAN / found if found else math.inf
    by_task = tasks * (limit + 1)
    return "run_list_owned" if by_task <= walk else "run_list"


async def list_run_logs(
    conn: Conn, run_id: uuid.UUID, *, after_id: int, limit: int
) -> list[RunLog]:
    async with conn.cursor(row_factory=model_row(RunLog)) as cur:
        await cur.execute(
            QUERIES["run_log_list"], {"run_id": run_id, "after_id": after_id, "limit": limit}
        )
        return await cur.fetchall()


async def running_count(conn: Conn) -> int:
    cur = await conn.execute(QUERIES["due_work_running_count"])
    row = await cur.fetchone()
    assert row is not None
    return int(row["running"])


async def state_estimates(conn: Conn) -> dict[str, float]:
    """Rows per due_work state from the planner's statistics ({} before the first ANALYZE)."""
    cur = await conn.execute(QUERIES["due_work_state_estimates"])
    return {row["state"]: float(row["rows"]) for row in await cur.fetchall()}


async def queue_depth(conn: Conn) -> tuple[int, int]:
    """(queued, due now)."""
    cur = await conn.execute(QUERIES["due_work_queue_depth"])
    row = await cur.fetchone()
    assert row is not None
    return int(row["queued"]), int(row["due"])


@dataclass(frozen=True)
class LostWork:
    id: int
    task_id: uuid.UUID
    attempt: int
    lease_owner: str | None
    cancel_requested: bool
    max_retries: int
    backoff_strategy: BackoffStrategy

    def __post_init__(self) -> None:
        object.__setattr__(self, "backoff_strategy", BackoffStrategy(self.backoff_strategy))


async def lock_expired(conn: Conn, *, limit: int) -> list[LostWork]:
    async with conn.cursor(row_factory=model_row(LostWork)) as cur:
        await cur.execute(QUERIES["due_work_lock_expired"], {"limit": limit})
        return await cur.fetchall()


async def end_lost_run(
    conn: Conn, work: LostWork, *, status: RunStatus, error: str
) -> dict[str, Any] | None:
    """End the lost attempt's run; returns its id, task_id, status and attempt if it changed."""
    cur = await conn.execute(
        QUERIES["run_end_lost"],
        {"due_work_id": work.id, "attempt": work.attempt, "status": status, "error": error},
    )
    return await cur.fetchone()


async def finish_lost(conn: Conn, work: LostWork, *, state: WorkState) -> None:
    await conn.execute(
        QUERIES["due_work_finish_lost"], {"id": work.id, "attempt": work.attempt, "state": state}
    )


async def requeue_lost(conn: Conn, work: LostWork, *, delay_seconds: float) -> bool:
    """Queue the next attempt (and its run row); False if the work moved on meanwhile."""
    cur = await conn.execute(
        QUERIES["due_work_requeue_lost"],
        {"id": work.id, "attempt": work.attempt, "delay_seconds": delay_seconds},
    )
    row = await cur.fetchone()
    if row is None:
        return False
    await insert_next_attempt(conn, row)
    return True


async def insert_next_attempt(conn: Conn, work: dict[str, Any]) -> None:
    """The queued run of an occurrence's next attempt (`work`: its requeued due_work row)."""
    await conn.execute(
        QUERIES["run_insert_retry"],
        {
            "due_work_id": work["id"],
            "task_id": work["task_id"],
            "attempt": work["attempt"],
            "scheduled_for": work["scheduled_for"],
        },
    )


async def prune_finished(conn: Conn, *, before: datetime, limit: int) -> int:
    cur = await conn.execute(QUERIES["due_work_prune"], {"before": before, "limit": limit})
    return cur.rowcount


@dataclass(frozen=True)
class WaitingWork:
    """An occurrence waiting for a remote step, locked, with its run and retry policy."""

    id: int
    task_id: uuid.UUID
    scheduled_for: datetime
    attempt: int
    run_id: uuid.UUID
    max_retries: int
    backoff_strategy: BackoffStrategy
    schedule_kind: str
    next_run_at: datetime | None
    step_id: str | None  # the waiting step's (the last record of the run's steps)
    uses: str | None
    owner: uuid.UUID | None = None  # the task's (read by a complete, for the step's cost)
    charged: str | None = None  # what the waiting step was charged when offered

    def __post_init__(self) -> None:
        object.__setattr__(self, "backoff_strategy", BackoffStrategy(self.backoff_strategy))


async def lock_waiting_expired(conn: Conn, *, limit: int) -> list[WaitingWork]:
    """Waiting occurrences past their deadline, locked (SKIP LOCKED), earliest first."""
    async with conn.cursor(row_factory=model_row(WaitingWork)) as cur:
        await cur.execute(QUERIES["due_work_lock_waiting_expired"], {"limit": limit})
        return await cur.fetchall()


async def continue_waiting(
    conn: Conn, work: WaitingWork, *, step_id: str, patch: dict[str, Any]
) -> bool:
    """The remote step succeeded: patch its record and queue the run again (same attempt)."""
    cur = await conn.execute(
        QUERIES["run_continue"], {"id": work.run_id, "step_id": step_id, "patch": Jsonb(patch)}
    )
    if await cur.fetchone() is None:
        return False
    cur = await conn.execute(QUERIES["due_work_continue"], {"id": work.id, "attempt": work.attempt})
    return await cur.fetchone() is not None


async def end_waiting(
    conn: Conn,
    work: WaitingWork,
    *,
    status: RunStatus,
    error: str,
    step_id: str,
    patch: dict[str, Any],
    retry_delay: float | None,
) -> dict[str, Any] | None:
    """End the waiting attempt's run (`status`, the step's record patched) and either queue
    the next attempt after `retry_delay` or end the occurrence in `status`. Returns the
    run's id, task_id, status and attempt, or None if it had moved on."""
    cur = await conn.execute(
        QUERIES["run_end_waiting"],
        {
            "id": work.run_id,
            "status": status,
            "error": error,
            "step_id": step_id,
            "patch": Jsonb(patch),
        },
    )
    run: dict[str, Any] | None = await cur.fetchone()
    if run is None:
        return None
    if retry_delay is None:
        await conn.execute(
            QUERIES["due_work_end_waiting"],
            {"id": work.id, "attempt": work.attempt, "state": status},
        )
    else:
        cur = await conn.execute(
            QUERIES["due_work_retry_waiting"],
            {"id": work.id, "attempt": work.attempt, "delay_seconds": retry_delay},
        )
        row = await cur.fetchone()
        if row is not None:
            await insert_next_attempt(conn, row)
    return run
