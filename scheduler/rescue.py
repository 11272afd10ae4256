"""Work whose worker died: back to the queue with its attempt counted, or ended. And work
waiting for a remote step past its deadline: ended as timed out, or retried by its policy.

A lease runs out only when its worker stopped renewing it (died, or lost the
database), never while a long step is still heartbeating. The requeue bumps
the attempt number, and every write a worker makes names the attempt it
holds, so the old worker can no longer change anything for this occurrence.
"""

from __future__ import annotations

import logging

from pao import streams
from pao.backoff import retry_delay
from pao.db import Conn
from pao.domain import claims
from pao.store import run_events, runs
from pao.store import work as work_store
from pao.vocabulary import RunStatus, WorkState
from scheduler import metrics

log = logging.getLogger(__name__)


async def rescue_batch(conn: Conn, *, limit: int, base_seconds: float, cap_seconds: float) -> int:
    """Handle up to `limit` expired leases in the caller's transaction; returns how many."""
    lost = await runs.lock_expired(conn, limit=limit)
    ended: list[str] = []
    for work in lost:
        owner = work.lease_owner or "unknown"
        outcome: str
        if work.cancel_requested:
            run = await runs.end_lost_run(
                conn,
                work,
                status=RunStatus.CANCELLED,
                error=f"cancelled; worker {owner} lost its lease",
            )
            await runs.finish_lost(conn, work, state=WorkState.CANCELLED)
            outcome = RunStatus.CANCELLED
        elif work.attempt > work.max_retries:
            run = await runs.end_lost_run(
                conn,
                work,
                status=RunStatus.FAILED,
                error=(
                    f"worker {owner} lost its lease (it died or lost the database); "
                    f"no retries left (max_retries={work.max_retries})"
                ),
            )
            await runs.finish_lost(conn, work, state=WorkState.FAILED)
            outcome = RunStatus.FAILED
        else:
            delay = retry_delay(
                work.backoff_strategy,
                work.attempt,
                base_seconds=base_seconds,
                cap_seconds=cap_seconds,
            )
            run = await runs.end_lost_run(
                conn,
                work,
                status=RunStatus.FAILED,
                error=(
                    f"worker {owner} lost its lease (it died or lost the database); "
                    f"retrying in {delay.total_seconds():.1f}s"
                ),
            )
            await runs.requeue_lost(conn, work, delay_seconds=delay.total_seconds())
            outcome = "requeued"
        metrics.RESCUES.labels(outcome).inc()
        if run is not None:
            # Rare, so told to any stream unconditionally; sent when the rescue commits.
            ended.append(streams.state(run["id"], run["task_id"], run["status"], run["attempt"]))
        log.warning("rescued due_work %s (attempt %s) from %s", work.id, work.attempt, owner)
    await run_events.publish(conn, ended)
    if lost:
        await work_store.notify_workers(conn)  # concurrency keys they held are free again
    swept = await sweep_waiting(
        conn, limit=limit, base_seconds=base_seconds, cap_seconds=cap_seconds
    )
    return len(lost) + swept


async def sweep_waiting(conn: Conn, *, limit: int, base_seconds: float, cap_seconds: float) -> int:
    """End up to `limit` occurrences waiting past their remote step's deadline (its
    `timeout_seconds`, cut to the run's deadline) in the caller's transaction: timed out, or
    a next attempt after the task's backoff while retries are left. Their remote steps are
    cancelled: a holder's next call is a 409."""
    expired = await runs.lock_waiting_expired(conn, limit=limit)
    for waiting in expired:
        run = await claims.end_waiting(
            conn,
            waiting,
            status=RunStatus.TIMED_OUT,
            error=(
                f"step {waiting.step_id}: the remote step did not end in time (its "
                "timeout_seconds, or the run's deadline PAO_RUN_TIMEOUT)"
            ),
            retryable=True,
            retry_base_seconds=base_seconds,
            retry_cap_seconds=cap_seconds,
        )
        outcome = (
            "requeued"
            if run is not None and run["status"] == RunStatus.FAILED
            else RunStatus.TIMED_OUT
        )
        metrics.RESCUES.labels(f"waiting_{outcome}").inc()
        log.warning("due_work %s: its remote step's wait ran out (%s)", waiting.id, outcome)
    return len(expired)
