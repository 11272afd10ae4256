"""What agents do with runs."""

from __future__ import annotations

import uuid

from pao import streams
from pao.db import Conn
from pao.errors import Conflict, NotFound
from pao.models import Agent, Run
from pao.store import audit, run_events, runs


def _owner(actor: Agent) -> uuid.UUID | None:
    return None if actor.is_admin else actor.id


async def get_run(conn: Conn, actor: Agent, run_id: uuid.UUID, *, lock: bool = False) -> Run:
    run = await runs.get_run(conn, run_id, owner=_owner(actor), for_update=lock)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


async def cancel_run(conn: Conn, actor: Agent, run_id: uuid.UUID, *, request_id: str | None) -> Run:
    """Stop this run: at once when queued; a running one is stopped by its worker."""
    run = await get_run(conn, actor, run_id, lock=True)
    if run.status not in ("queued", "running"):
        raise Conflict(f"the run already ended as {run.status}")
    cancelled = await runs.cancel_run(conn, run, reason=f"cancelled by agent {actor.name}")
    if cancelled.status == "cancelled":  # a queued run; a running one ends through its worker
        await run_events.publish(
            conn, [streams.state(run.id, run.task_id, "cancelled", run.attempt)]
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
