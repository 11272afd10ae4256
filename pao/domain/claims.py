"""The claim protocol: agents outside pao take remote steps, report on them and end them.

A claim id is an opaque fencing token, ``rc_<step>_<delivery>_<secret>``: the remote step's
id, how many times the step had been claimed with this claim, and 128 random bits of which
only the SHA-256 is stored. A call with a claim id acts only while that claim holds the
step: the step is still `claimed` with this very secret, its lease (by the database clock)
has not run out and its run is still live. Otherwise nothing changes and the answer says
why: an id that is malformed, names no step or has the wrong secret is unknown (404); one
from an earlier delivery, or whose lease ran out, step ended or run was cancelled, has lost
its claim (409: stop working); another agent's is forbidden (403).

A step whose lease ran out is taken by the next claim of its type: no scheduler is needed,
and the old claim id is fenced out by the new delivery number and secret.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pao import costs, streams
from pao.asset_inputs import asset_fields
from pao.backoff import retry_delay
from pao.db import Conn
from pao.domain import budgets
from pao.domain.task_types import check_output, check_parameters
from pao.errors import (
    ClaimLost,
    FieldError,
    Forbidden,
    InvalidInput,
    NotFound,
    TaskTypeUnavailable,
)
from pao.models import Agent
from pao.settings import Settings
from pao.store import agents as agent_store
from pao.store import events as event_store
from pao.store import remote_steps as store
from pao.store import run_events, runs
from pao.store import task_types as type_store
from pao.store import work as work_store
from pao.store.runs import WaitingWork
from pao.store.task_types import TaskType
from pao.streams import log as log_event
from pao.vocabulary import RemoteStepState, RunStatus, ScheduleKind, StepStatus

DEFAULT_TIMEZONE = Settings.default_timezone
_CLAIM_ID = re.compile(r"^rc_([1-9][0-9]{0,18})_([1-9][0-9]{0,9})_([0-9a-f]{32})$")
_MAX_BIGINT = 2**63 - 1


def idempotency_key(run_id: uuid.UUID, step_id: str) -> str:
    """The key a step keeps across its deliveries: a claimer that is handed a step again
    (the last holder's lease ran out) can tell it is the same work."""
    return f"{run_id}:{step_id}"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


@dataclass(frozen=True)
class ParsedClaim:
    step: int
    delivery: int
    token_hash: bytes


def parse_claim_id(claim_id: str) -> ParsedClaim:
    """The parts of a claim id; NotFound if it cannot be one."""
    m = _CLAIM_ID.match(claim_id)
    if m is None or int(m.group(1)) > _MAX_BIGINT:
        raise NotFound(_UNKNOWN)
    return ParsedClaim(int(m.group(1)), int(m.group(2)), _hash(m.group(3)))


_UNKNOWN = (
    "no such claim; claim ids come from POST /task-types/{name}/claim and are used exactly as given"
)


# Offering (the worker) -----------------------------------------------------------------


async def offer_step(
    conn: Conn,
    *,
    run_id: uuid.UUID,
    step_index: int,
    step_id: str,
    task_type: str,
    parameters: dict[str, Any],
) -> int | None:
    """Check a step's rendered parameters against its type, then offer it
    (`store.offer_remote_step`). TaskTypeUnavailable if the type is missing or inactive,
    InvalidInput if the parameters break its schema, AssetInputRefused if a `format: asset`
    parameter names an asset the task's owner may not use (the run should fail with the
    message); None if this run offered this step already."""
    found = await type_store.get(conn, task_type)
    if found is None or not found.is_active:
        raise TaskTypeUnavailable(
            f"step {step_id!r} uses task type {task_type!r}, which "
            f"{'is inactive' if found else 'does not exist'}; an admin can make it active "
            f"again (PUT /task-types/{task_type}), or change the task to use another tool"
        )
    check_parameters(found, parameters, step_id)
    inputs = await _input_assets(conn, run_id, step_id, found, parameters)
    return await store.offer_remote_step(
        conn,
        run_id=run_id,
        step_index=step_index,
        step_id=step_id,
        task_type=task_type,
        parameters=parameters,
        idempotency_key=idempotency_key(run_id, step_id),
        input_assets=inputs,
    )


async def _input_assets(
    conn: Conn, run_id: uuid.UUID, step_id: str, found: TaskType, parameters: dict[str, Any]
) -> list[uuid.UUID]:
    """The assets a remote step's parameters name where its type takes assets, each checked
    against the task's owner as it is now: its claimers may read these, and only these."""
    fields = asset_fields(found.parameters_schema, parameters)
    if not fields:
        return []
    from pao.domain import (
        assets,  # what reads assets is loaded by the workers whose steps take some
    )

    origin = await event_store.step_origin(conn, run_id)
    if origin is None:
        raise TaskTypeUnavailable(f"step {step_id!r}: its run is no longer in the database")
    whose = f"the task's owner (agent {origin.owner.name!r})"
    loc: tuple[str | int, ...] = ("steps", step_id, "with")
    named = await assets.check_step_inputs(
        conn, origin.owner, [(loc, f) for f in fields], whose=whose
    )
    return list(dict.fromkeys(a.id for a in named))


# Claiming (the API) --------------------------------------------------------------------


async def claimable_type(conn: Conn, agent: Agent, name: str) -> TaskType:
    """The active type `agent` may claim; NotFound or Forbidden (403) otherwise."""
    found = await type_store.get(conn, name)
    if found is None or not found.is_active:
        raise NotFound(f"no active task type {name[:200]!r}; GET /task-types lists them")
    allowed = await agent_store.task_types_of(conn, agent.id)
    if allowed is not None and name not in allowed:
        raise Forbidden(
            f"this agent may claim only the task types {allowed}; ask an admin to add "
            f"{name!r} to its task_types (PUT /agents/{agent.id})"
        )
    return found


@dataclass(frozen=True)
class ClaimedStep:
    claim_id: str
    run_id: uuid.UUID
    task_id: uuid.UUID
    step_id: str
    attempt: int
    parameters: dict[str, Any]
    idempotency_key: str
    lease_expires_at: datetime


async def claim(
    conn: Conn, agent: Agent, task_type: str, limit: int
) -> tuple[list[ClaimedStep], int]:
    """Claim up to `limit` steps now (none waiting: an empty list). Also how many steps of
    runs that ended were dropped on the way (the caller may claim again at once)."""
    secrets_ = [secrets.token_hex(16) for _ in range(limit)]
    claimed, dropped = await store.claim(
        conn, task_type=task_type, agent_id=agent.id, token_hashes=[_hash(s) for s in secrets_]
    )
    return [
        ClaimedStep(
            claim_id=f"rc_{c.id}_{c.deliveries}_{secrets_[c.n - 1]}",
            run_id=c.run_id,
            task_id=c.task_id,
            step_id=c.step_id,
            attempt=c.attempt,
            parameters=c.parameters,
            idempotency_key=c.idempotency_key,
            lease_expires_at=c.lease_expires_at,
        )
        for c in claimed
    ], dropped


async def next_lease_end(conn: Conn, task_type: str) -> float | None:
    """Seconds until a held step of the type may be claimed again; None: none is held."""
    return await store.next_lease_end(conn, task_type)


# Acting on a claim ---------------------------------------------------------------------


async def _held(conn: Conn, agent: Agent, claim_id: str) -> tuple[store.Held, ParsedClaim]:
    """The step this claim holds, locked; raises unless the claim may act on it now."""
    parsed = parse_claim_id(claim_id)
    held = (await store.lock(conn, [parsed.step])).get(parsed.step)
    return _verdict(agent, parsed, held), parsed


async def _lock_waiting(conn: Conn, steps: list[int]) -> dict[int, WaitingWork]:
    """The occurrences waiting for these steps, locked with their runs, by step: a complete
    or fail takes these before the steps, the order a cancel takes them in, so the two
    never deadlock."""
    found = await store.lock_waiting_work(conn, steps)
    return {step: WaitingWork(**fields) for step, fields in found.items()}


def _verdict(agent: Agent, parsed: ParsedClaim, held: store.Held | None) -> store.Held:
    """The locked step `held` if the parsed claim may act on it now; else raises why not."""
    if held is None or parsed.delivery > held.deliveries:
        raise NotFound(_UNKNOWN)
    if parsed.delivery < held.deliveries:
        raise ClaimLost(
            "this claim was taken over: its lease ran out and the step was claimed again; "
            "stop working on it"
        )
    if held.claim_token_hash is None or not secrets.compare_digest(
        held.claim_token_hash, parsed.token_hash
    ):
        raise NotFound(_UNKNOWN)
    if held.holder_agent_id != agent.id:
        raise Forbidden("this claim belongs to another agent; only its holder may use it")
    if held.state == RemoteStepState.SUCCEEDED:
        raise ClaimLost("this step was completed already; nothing more to do")
    if held.state == RemoteStepState.FAILED:
        raise ClaimLost("this step was failed already; nothing more to do")
    if held.state == RemoteStepState.CANCELLED or not held.run_live:
        raise ClaimLost("the step's run was cancelled or has ended; stop working on it")
    if not held.lease_live:
        raise ClaimLost(
            "this claim's lease ran out (heartbeat sooner than lease_seconds); the step is "
            "offered again, so stop working on it"
        )
    return held


async def heartbeat(conn: Conn, agent: Agent, claim_id: str) -> datetime:
    """Extend the claim's lease by its type's lease_seconds; the new end."""
    held, parsed = await _held(conn, agent, claim_id)
    until = await store.heartbeat(conn, held.id, parsed.token_hash)
    if until is None:  # cannot happen under the row lock; never extend a lost claim
        raise ClaimLost("this claim no longer holds its step; stop working on it")
    return until


async def progress(
    conn: Conn, agent: Agent, claim_id: str, *, message: str, percent: float | None
) -> datetime:
    """A progress report: a log line of the step's run, and an event for its live streams.
    Returns when the claim's lease ends (a report does not extend it)."""
    held, _ = await _held(conn, agent, claim_id)
    text = message if percent is None else f"{percent:g}% {message}"
    log_id = await store.progress_log(conn, run_id=held.run_id, step_id=held.step_id, message=text)
    await run_events.publish(conn, [log_event(held.run_id, held.task_id, log_id)])
    assert held.lease_expires_at is not None  # a live lease
    return held.lease_expires_at


@dataclass(frozen=True)
class Completion:
    """One claim's step completed with `output` and `cost`."""

    claim_id: str
    output: dict[str, Any]
    cost: Decimal | None = None


async def complete(
    conn: Conn,
    agent: Agent,
    claim_id: str,
    *,
    output: dict[str, Any],
    cost: Decimal | None,
    now: datetime,
    default_timezone: str = DEFAULT_TIMEZONE,
) -> None:
    """The step succeeded with `output` (checked against the type's output_schema first:
    InvalidInput, and nothing changes, if it breaks it).

    If its run waits for it, the same transaction writes the output into the run's step
    record (the run's checkpoint: the source the pipeline resumes from) and queues the run
    again, same attempt, for any worker to continue; idle workers are woken at commit.
    """
    try:
        [refused] = await complete_many(
            conn,
            agent,
            [Completion(claim_id, output, cost)],
            now=now,
            default_timezone=default_timezone,
        )
    except InvalidInput as exc:  # named from the body's `output`, not `items[0].output`
        raise InvalidInput([FieldError(e.loc[2:], e.message) for e in exc.errors]) from None
    if refused is not None:
        raise refused


async def complete_many(
    conn: Conn,
    agent: Agent,
    items: Sequence[Completion],
    *,
    now: datetime,
    default_timezone: str = DEFAULT_TIMEZONE,
) -> list[NotFound | ClaimLost | None]:
    """Complete several claims' steps at once, as `complete` does each, with set-based
    statements: for each item in order, None (its step succeeded) or why its claim could
    not act (NotFound, ClaimLost), as `complete` would have raised it; those items change
    nothing and the others go on. Raises for the whole batch, and nothing changes, when a
    claim is another agent's (Forbidden) or an output of a held step breaks its type's
    output_schema (InvalidInput naming `items[i].output...`).

    A reported `cost` replaces what the step was charged when it was offered (its type's
    cost_per_call, or nothing): the difference goes to its run and its owner's spending
    (in `default_timezone` for an owner with no zone) as of `now` (the database's clock),
    unchecked, since it was spent.

    Locks, as one complete and a run cancel take them: the waiting occurrences and their
    runs (in occurrence order), then the steps (in id order); two batches, or a batch and a
    cancel, wait for each other instead of deadlocking.
    """
    outcome: list[NotFound | ClaimLost | None] = [None] * len(items)
    parsed: dict[int, ParsedClaim] = {}
    for i, item in enumerate(items):
        try:
            parsed[i] = parse_claim_id(item.claim_id)
        except NotFound as exc:
            outcome[i] = exc
    steps = sorted({p.step for p in parsed.values()})
    waiting = await _lock_waiting(conn, steps) if steps else {}
    locked = await store.lock(conn, steps) if steps else {}
    held: dict[int, store.Held] = {}
    for i, p in parsed.items():
        try:
            held[i] = _verdict(agent, p, locked.get(p.step))
        except (NotFound, ClaimLost) as exc:
            outcome[i] = exc
    errors: list[FieldError] = []
    types: dict[str, TaskType | None] = {}
    for i, h in held.items():
        if h.task_type not in types:
            types[h.task_type] = await type_store.get(conn, h.task_type)
        task_type = types[h.task_type]
        if task_type is None:
            continue
        try:
            check_output(task_type, items[i].output)
        except InvalidInput as exc:
            errors.extend(FieldError(("items", i, *e.loc), e.message) for e in exc.errors)
    if errors:
        raise InvalidInput(errors)
    if not held:
        return outcome
    done = set(
        await store.complete(
            conn,
            [
                store.Completion(h.id, parsed[i].token_hash, items[i].output, items[i].cost)
                for i, h in held.items()
            ],
        )
    )
    continuing: list[dict[str, Any]] = []
    cost_events: list[str] = []
    for i, h in held.items():
        if h.id not in done:  # cannot happen under the row lock
            outcome[i] = ClaimLost("this claim no longer holds its step; stop working on it")
            continue
        work = waiting.get(h.id)
        if work is None:
            continue
        patch = {
            "id": h.step_id,
            "uses": h.task_type,
            "status": StepStatus.SUCCEEDED,
            "output": items[i].output,
            "remote_step": h.id,
        }
        reported = items[i].cost
        if reported is not None:
            patch["cost"] = costs.text(reported)
            delta = reported - (Decimal(work.charged) if work.charged else costs.ZERO)
            if delta and work.owner is not None:
                total = await budgets.adjust(
                    conn,
                    owner=work.owner,
                    run_id=work.run_id,
                    delta=delta,
                    now=now,
                    default_timezone=default_timezone,
                )
                cost_events.append(streams.cost(work.run_id, work.task_id, h.step_id, delta, total))
        continuing.append(
            {
                "run_id": str(work.run_id),
                "work_id": work.id,
                "attempt": work.attempt,
                "step_id": h.step_id,
                "patch": patch,
            }
        )
    if continuing:
        if await store.continue_runs(conn, continuing) != len(continuing):
            # Cannot happen with the occurrences and runs locked; never half-continue.
            raise ClaimLost("a step's run was cancelled or has ended; stop working on it")
        await work_store.notify_workers(conn)
    if cost_events:
        await run_events.publish(conn, cost_events)
    return outcome


async def release(conn: Conn, agent: Agent, claim_id: str) -> None:
    """Hand the claim's step back unfinished (its claimer is stopping), without spending an
    attempt: it is queued again at once for the next claimer, who gets a new claim id.

    The step's `deliveries` count is left as it is; the next claim counts one more, as
    every claim does, so the released claim id answers 409 (claim lost) from then on, and
    before then too (its lease is gone). The same checks as every claim call refuse a
    stale, foreign or forged id (409, 403, 404) and nothing changes. ClaimLost if the claim
    no longer holds the step (nothing to hand back)."""
    held, parsed = await _held(conn, agent, claim_id)
    if not await store.release(conn, held.id, parsed.token_hash):
        raise ClaimLost("this claim no longer holds its step; nothing to hand back")


async def fail(
    conn: Conn,
    agent: Agent,
    claim_id: str,
    *,
    error: str,
    retryable: bool,
    retry_base_seconds: float = 5.0,
    retry_cap_seconds: float = 3600.0,
) -> None:
    """The step failed. If its run waits for it, the task's retry policy decides in the
    same transaction: a next attempt after the backoff (`retryable`, retries left), which
    resumes after the last step that succeeded and offers this one again; else the run
    fails with the error."""
    parsed = parse_claim_id(claim_id)
    waiting = (await _lock_waiting(conn, [parsed.step])).get(parsed.step)
    held = _verdict(agent, parsed, (await store.lock(conn, [parsed.step])).get(parsed.step))
    if not await store.fail(conn, held.id, parsed.token_hash, error=error, retryable=retryable):
        raise ClaimLost("this claim no longer holds its step; stop working on it")
    if waiting is None:
        return
    await end_waiting(
        conn,
        waiting,
        status=RunStatus.FAILED,
        error=f"step {held.step_id}: {error}",
        retryable=retryable,
        retry_base_seconds=retry_base_seconds,
        retry_cap_seconds=retry_cap_seconds,
    )


async def end_waiting(
    conn: Conn,
    waiting: WaitingWork,
    *,
    status: RunStatus,
    error: str,
    retryable: bool,
    retry_base_seconds: float,
    retry_cap_seconds: float,
) -> dict[str, Any] | None:
    """End a waiting attempt whose remote step failed (`status` failed) or ran out of time
    (timed_out): retried after the task's backoff if `retryable` and retries are left (the
    attempt ends failed, a new run is queued), else ended in `status`. The run's live
    remote steps are cancelled (their holders' next call is a 409). Returns the ended run
    (id, task_id, status, attempt) or None if it had moved on."""
    delay: float | None = None
    message = error
    if retryable and waiting.attempt <= waiting.max_retries:
        delay = retry_delay(
            waiting.backoff_strategy,
            waiting.attempt,
            base_seconds=retry_base_seconds,
            cap_seconds=retry_cap_seconds,
        ).total_seconds()
        message = f"{error}; retrying in {delay:.1f}s"
    step_id = waiting.step_id or ""
    patch: dict[str, Any] = {"id": step_id, "status": StepStatus.FAILED, "error": error}
    if waiting.uses is not None:
        patch["uses"] = waiting.uses
    run = await runs.end_waiting(
        conn,
        waiting,
        status=RunStatus.FAILED if delay is not None else status,
        error=message,
        step_id=step_id,
        patch=patch,
        retry_delay=delay,
    )
    if run is None:
        return None
    await store.cancel_for_run(conn, waiting.run_id)
    if delay is not None:
        await work_store.notify_workers(conn)
    elif waiting.schedule_kind != ScheduleKind.EVENT and waiting.next_run_at is None:
        await work_store.complete_tasks_if_done(conn, [waiting.task_id])
    await run_events.publish(
        conn, [streams.state(run["id"], run["task_id"], run["status"], run["attempt"])]
    )
    return run
