"""What agents do with runs."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from pao import pagination, streams
from pao.db import Conn
from pao.domain.assets import run_assets
from pao.errors import Conflict, NotFound
from pao.models import Agent, Run, RunLog
from pao.store import audit, remote_steps, run_events, runs
from pao.store.assets import RunAsset
from pao.visibility import owner_filter
from pao.vocabulary import LIVE_RUN_STATUSES, RunStatus, StepStatus


async def get_run(conn: Conn, actor: Agent, run_id: uuid.UUID, *, lock: bool = False) -> Run:
    run = await runs.get_run(conn, run_id, owner=owner_filter(actor), for_update=lock)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


@dataclass(frozen=True)
class RunView:
    """A run as GET /runs/{id} shows it, with the assets it made."""

    run: Run
    assets: list[RunAsset]


async def get_run_view(conn: Conn, actor: Agent, run_id: uuid.UUID) -> RunView:
    """One run as GET /runs/{id} shows it: a step waiting for a remote worker carries
    `remote`: its offer's state, its holder (`holder_agent_id`, `holder_name`, while
    claimed, with `lease_expires_at`) and its last progress report (`progress`); and the
    assets the run made (its owner's, as the run is)."""
    run = await get_run(conn, actor, run_id)
    made = await run_assets(conn, run.id)
    if run.status is not RunStatus.RUNNING:
        return RunView(run, made)
    steps: list[Any] = list(run.steps)
    for i, step in enumerate(steps):
        if isinstance(step, dict) and step.get("status") == StepStatus.WAITING:
            found = await remote_steps.view(conn, run_id=run.id, step_id=str(step.get("id")))
            if found is not None:
                steps[i] = {**step, "remote": found}
                return RunView(dataclasses.replace(run, steps=steps), made)
    return RunView(run, made)


async def list_runs(
    conn: Conn,
    actor: Agent,
    *,
    limit: int,
    cursor: str | None,
    task_id: uuid.UUID | None = None,
    status: RunStatus | None = None,
) -> tuple[list[Run], str | None]:
    """A page of the runs `actor` may see, newest first, and the cursor of the next page."""
    rows = await runs.list_runs(
        conn,
        owner=owner_filter(actor),
        limit=limit + 1,
        after=pagination.decode_cursor(cursor),
        task_id=task_id,
        status=status,
    )
    return pagination.page(rows, limit, lambda r: pagination.encode_cursor(r.queued_at, r.id))


async def list_logs(
    conn: Conn, actor: Agent, run_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[RunLog], str | None]:
    """A page of a run's log lines, oldest first, if `actor` may see the run."""
    after_id = pagination.decode_position(cursor)
    await get_run(conn, actor, run_id)
    lines = await runs.list_run_logs(conn, run_id, after_id=after_id, limit=limit + 1)
    return pagination.page(lines, limit, lambda line: pagination.encode_position(line.id))


async def cancel_run(conn: Conn, actor: Agent, run_id: uuid.UUID, *, request_id: str | None) -> Run:
    """Stop this run: at once when queued; a running one is stopped by its worker."""
    run = await get_run(conn, actor, run_id, lock=True)
    if run.status not in LIVE_RUN_STATUSES:
        raise Conflict(f"the run already ended as {run.status}")
    cancelled = await runs.cancel_run(conn, run, reason=f"cancelled by agent {actor.name}")
    if (
        cancelled.status is RunStatus.CANCELLED
    ):  # a queued run; a running one ends through its worker
        await run_events.publish(
            conn, [streams.state(run.id, run.task_id, RunStatus.CANCELLED, run.attempt)]
        )
    await audit.record(
        conn,
        actor_id=actor.id,
        action="run.cancel",
        target_type="run",
        target_id=run.id,
        request_id=request_id,
    )
    return cancelled
