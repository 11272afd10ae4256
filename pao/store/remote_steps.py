"""Remote steps: a run's steps offered to the agents that claim their task type.

`offer_remote_step` is what the worker calls when a pipeline reaches a step whose tool is a
task type; the API's claim routes (`pao.domain.claims`) do the rest. When a step ends (succeeded
or failed by its holder) `ENDED_CHANNEL` is notified with a JSON payload
``{"step": <remote step id>, "run": <run id>, "step_id": <step id>, "state": <state>}``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from pao.db import Conn, model_row
from pao.sql import QUERIES

OFFERED_CHANNEL = "pao_remote_work"
"""Notified with a task type's name when a step of that type is offered."""
ENDED_CHANNEL = "pao_remote_steps"
"""Notified when a remote step succeeds or fails (what the worker listens for)."""


@dataclass(frozen=True)
class RemoteStep:
    id: int
    run_id: uuid.UUID
    step_index: int
    step_id: str
    task_type: str
    state: str
    parameters: dict[str, Any]
    idempotency_key: str
    deliveries: int
    holder_agent_id: uuid.UUID | None
    lease_expires_at: datetime | None
    offered_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    output: dict[str, Any] | None
    cost: Decimal | None
    error: str | None
    retryable: bool | None


async def offer_remote_step(
    conn: Conn,
    *,
    run_id: uuid.UUID,
    step_index: int,
    step_id: str,
    task_type: str,
    parameters: dict[str, Any],
    idempotency_key: str,
    input_assets: list[uuid.UUID] | None = None,
) -> int | None:
    """Offer one step of a run (its rendered parameters) to the claimers of `task_type`;
    `input_assets` are the (checked) assets its parameters name, which its claimers may read.

    Returns the remote step's id; None when the type is not active (or does not exist) or
    this run already offered this step. Waiting claimers hear of it when the caller's
    transaction commits. The caller checks the parameters first (`pao.domain.claims.offer_step`
    does both).
    """
    cur = await conn.execute(
        QUERIES["remote_step_offer"],
        {
            "run_id": run_id,
            "step_index": step_index,
            "step_id": step_id,
            "task_type": task_type,
            "parameters": Jsonb(parameters),
            "idempotency_key": idempotency_key,
            "input_assets": input_assets or [],
        },
    )
    row = await cur.fetchone()
    if row is None:
        return None
    await conn.execute(QUERIES["remote_step_notify_offered"], {"task_type": task_type})
    return int(row["id"])


@dataclass(frozen=True)
class Claimed:
    id: int
    n: int  # which of the claim's tokens it got (1-based)
    run_id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    step_id: str
    deliveries: int
    parameters: dict[str, Any]
    idempotency_key: str
    lease_expires_at: datetime


async def claim(
    conn: Conn, *, task_type: str, agent_id: uuid.UUID, token_hashes: list[bytes]
) -> tuple[list[Claimed], int]:
    """Claim up to len(token_hashes) steps; returns them and how many dead ones were dropped."""
    cur = await conn.execute(
        QUERIES["remote_step_claim"],
        {
            "task_type": task_type,
            "limit": len(token_hashes),
            "hashes": token_hashes,
            "agent_id": agent_id,
        },
    )
    claimed: list[Claimed] = []
    dropped = 0
    for row in await cur.fetchall():
        if row["kind"] == "dropped":
            dropped += 1
            continue
        claimed.append(Claimed(**{k: v for k, v in row.items() if k != "kind"}))
    return claimed, dropped


async def next_lease_end(conn: Conn, task_type: str) -> float | None:
    """Seconds until the first lease of the type's claimed steps runs out; None: none held."""
    cur = await conn.execute(QUERIES["remote_step_next_lease_end"], {"task_type": task_type})
    row = await cur.fetchone()
    return None if row is None or row["seconds"] is None else float(row["seconds"])


@dataclass(frozen=True)
class Held:
    """A step as its claim's holder acts on it, locked."""

    id: int
    run_id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    step_id: str
    task_type: str
    state: str
    deliveries: int
    claim_token_hash: bytes | None
    holder_agent_id: uuid.UUID | None
    lease_expires_at: datetime | None
    lease_live: bool
    run_live: bool


async def lock_waiting_work(conn: Conn, step_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The occurrences waiting for these steps, locked with their runs (take them before
    `lock`: occurrence, run, remote step is the one lock order), by remote step id; each
    value has the fields of `pao.store.runs.WaitingWork`. A step whose run is not waiting
    at its attempt is left out."""
    cur = await conn.execute(QUERIES["remote_step_lock_waiting_work"], {"ids": step_ids})
    return {row.pop("remote_step"): row for row in await cur.fetchall()}


async def lock(conn: Conn, step_ids: list[int]) -> dict[int, Held]:
    """These steps, locked in id order, by id (one that does not exist is left out)."""
    async with conn.cursor(row_factory=model_row(Held)) as cur:
        await cur.execute(QUERIES["remote_step_lock"], {"ids": step_ids})
        return {held.id: held for held in await cur.fetchall()}


async def heartbeat(conn: Conn, step_id: int, token_hash: bytes) -> datetime | None:
    """The new lease end, or None if the claim no longer holds the step."""
    cur = await conn.execute(
        QUERIES["remote_step_heartbeat"], {"id": step_id, "token_hash": token_hash}
    )
    row = await cur.fetchone()
    return row["lease_expires_at"] if row else None


@dataclass(frozen=True)
class Completion:
    """A held step's completion: its id, its claim's token hash, output and cost."""

    id: int
    token_hash: bytes
    output: dict[str, Any]
    cost: Decimal | None


async def complete(conn: Conn, done: list[Completion]) -> list[int]:
    """Complete steps in one statement, each only while its claim holds it; the ids of
    those completed (the workers hear of them at commit)."""
    cur = await conn.execute(
        QUERIES["remote_step_complete"],
        {
            "ids": [c.id for c in done],
            "token_hashes": [c.token_hash for c in done],
            "outputs": [Jsonb(c.output) for c in done],
            "costs": [c.cost for c in done],
        },
    )
    rows = await cur.fetchall()
    await _notify_ended(conn, rows)
    return [int(row["id"]) for row in rows]


async def continue_runs(conn: Conn, runs: list[dict[str, Any]]) -> int:
    """Queue again the runs waiting for steps just completed (their occurrences locked by
    `lock_waiting_work`); each item has run_id, work_id, attempt, step_id and patch (the
    step record's outcome). How many were continued."""
    cur = await conn.execute(QUERIES["remote_step_continue_runs"], {"runs": Jsonb(runs)})
    return sum(1 for row in await cur.fetchall() if row["queued"])


async def fail(conn: Conn, step_id: int, token_hash: bytes, *, error: str, retryable: bool) -> bool:
    cur = await conn.execute(
        QUERIES["remote_step_fail"],
        {"id": step_id, "token_hash": token_hash, "error": error, "retryable": retryable},
    )
    row = await cur.fetchone()
    if row is None:
        return False
    await _notify_ended(conn, [row])
    return True


async def release(conn: Conn, step_id: int, token_hash: bytes) -> bool:
    """Hand a claimed step back, queued for the next claimer (no attempt is spent); waiting
    claimers of its type hear of it when the caller's transaction commits. False if the
    claim no longer holds the step."""
    cur = await conn.execute(
        QUERIES["remote_step_release"], {"id": step_id, "token_hash": token_hash}
    )
    row = await cur.fetchone()
    if row is None:
        return False
    await conn.execute(QUERIES["remote_step_notify_offered"], {"task_type": row["task_type"]})
    return True


async def _notify_ended(conn: Conn, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    payloads = [
        json.dumps(
            {
                "step": row["id"],
                "run": str(row["run_id"]),
                "step_id": row["step_id"],
                "state": row["state"],
            },
            separators=(",", ":"),
        )
        for row in rows
    ]
    await conn.execute(QUERIES["remote_step_notify_ended"], {"payloads": payloads})


async def progress_log(conn: Conn, *, run_id: uuid.UUID, step_id: str, message: str) -> int:
    cur = await conn.execute(
        QUERIES["remote_step_progress_log"],
        {"run_id": run_id, "step_id": step_id, "message": message},
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def get(conn: Conn, *, run_id: uuid.UUID, step_id: str) -> RemoteStep | None:
    """A run's remote step with its outcome (the worker reads it after ENDED_CHANNEL)."""
    async with conn.cursor(row_factory=model_row(RemoteStep)) as cur:
        await cur.execute(QUERIES["remote_step_get"], {"run_id": run_id, "step_id": step_id})
        return await cur.fetchone()


async def cancel_for_run(conn: Conn, run_id: uuid.UUID) -> int:
    """Cancel a run's remote steps not yet done; how many. Their holders' next call is a 409."""
    cur = await conn.execute(QUERIES["remote_step_cancel_for_run"], {"run_id": run_id})
    return len(await cur.fetchall())


async def view(conn: Conn, *, run_id: uuid.UUID, step_id: str) -> dict[str, Any] | None:
    """A waiting step's state, holder (id and name, while claimed) and last progress line."""
    cur = await conn.execute(QUERIES["remote_step_view"], {"run_id": run_id, "step_id": step_id})
    row: dict[str, Any] | None = await cur.fetchone()
    return row
