"""The claim protocol: agents with `work:claim` take steps of a task type and end them."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from api.deps import State, scope
from api.models import ClaimEnded, ClaimItem, ClaimLease, ClaimList, ClaimOutcome, ClaimOutcomes
from api.openapi import conflicts
from api.problems import problem_type
from api.remote import POLL_SECONDS, RemoteWork
from pao.domain import claims as logic
from pao.models import Agent
from pao.schemas import ClaimComplete, ClaimCompleteMany, ClaimFail, ClaimProgress, ClaimRequest
from pao.vocabulary import RemoteStepState, Scope

router = APIRouter(tags=["claims"])

WorkClaim = Annotated[Agent, Depends(scope(Scope.WORK_CLAIM))]
Name = Annotated[str, Path(min_length=1, max_length=128)]
ClaimId = Annotated[str, Path(min_length=1, max_length=200)]
LEASE_SLACK_SECONDS = 0.05


async def get_remote(request: Request) -> RemoteWork:
    remote: RemoteWork = request.app.state.remote_work
    return remote


Remote = Annotated[RemoteWork, Depends(get_remote)]


@router.post("/task-types/{name}/claim", response_model=ClaimList)
async def claim(
    request: Request,
    state: State,
    remote: Remote,
    agent: WorkClaim,
    name: Name,
    body: ClaimRequest,
) -> ClaimList:
    """Claim up to `limit` steps of the task type, waiting up to `wait_seconds` for one.

    Answers as soon as there is work (an empty list once `wait_seconds` have passed). Each
    item's `claim_id` holds the step for the type's `lease_seconds`: heartbeat sooner, then
    complete or fail it. A step whose lease runs out is offered again, with a new claim id.
    403 if this agent's `task_types` leave this type out.
    """
    async with state.tx() as conn:
        await logic.claimable_type(conn, agent, name)
    remote.start()
    loop_time = asyncio.get_running_loop().time
    until = loop_time() + body.wait_seconds
    while True:
        with remote.waiting(name) as offered:
            async with state.tx() as conn:
                found, dropped = await logic.claim(conn, agent, name, body.limit)
                lease_end = None if found or dropped else await logic.next_lease_end(conn, name)
            if found:
                return ClaimList(items=[ClaimItem(**vars(c)) for c in found])
            if dropped:
                continue  # steps of ended runs were in the way: look again at once
            left = until - loop_time()
            if left <= 0 or remote.stopping:
                return ClaimList(items=[])
            if lease_end is not None:  # a held step may be taken when its lease runs out
                left = min(left, max(0.0, lease_end) + LEASE_SLACK_SECONDS)
            if not remote.notified:
                left = min(left, POLL_SECONDS)
            await remote.wait(offered, left)
        if await request.is_disconnected():
            # The claimer gave up (stopped, timed out): steps claimed now would reach no one
            # and wait out their lease. Leave them to the claimers still listening.
            return ClaimList(items=[])


@router.post(
    "/claims/complete",
    response_model=ClaimOutcomes,
    response_model_exclude_none=True,
    responses=conflicts(403),
)
async def complete_many(state: State, agent: WorkClaim, body: ClaimCompleteMany) -> ClaimOutcomes:
    """Complete up to 100 claims' steps in one transaction, each as
    POST /claims/{claim_id}/complete would.

    Each item gets its own outcome, in the order sent: `status` 200 (`state` succeeded), or
    404 / 409 with the problem `type` (`urn:pao:problem:claim-lost`: stop working on that
    step) for an item that changed nothing; the others succeed regardless. The whole request
    is refused and nothing changes on 422 (a malformed item, more than 100, a claim sent
    twice, or an output that breaks its type's `output_schema`, named `items[i].output...`)
    and on 403 (a claim that belongs to another agent).
    """
    items = [logic.Completion(i.claim_id, i.output, i.cost) for i in body.items]
    zone = state.settings.default_timezone
    async with state.tx() as conn:
        now = await state.clock.now(conn)
        refused = await logic.complete_many(conn, agent, items, now=now, default_timezone=zone)
    outcomes = []
    for item, error in zip(items, refused, strict=True):
        if error is None:
            outcomes.append(
                ClaimOutcome(claim_id=item.claim_id, status=200, state=RemoteStepState.SUCCEEDED)
            )
        else:
            status, type_ = problem_type(error)
            outcomes.append(
                ClaimOutcome(
                    claim_id=item.claim_id, status=status, type=type_, detail=error.message
                )
            )
    return ClaimOutcomes(items=outcomes)


@router.post("/claims/{claim_id}/heartbeat", response_model=ClaimLease, responses=conflicts(409))
async def heartbeat(state: State, agent: WorkClaim, claim_id: ClaimId) -> ClaimLease:
    """Extend the claim's lease by the type's `lease_seconds`. 409: the claim was lost (lease
    ran out, step claimed again or ended, run cancelled): stop working on the step."""
    async with state.tx() as conn:
        until = await logic.heartbeat(conn, agent, claim_id)
    return ClaimLease(claim_id=claim_id, lease_expires_at=until)


@router.post("/claims/{claim_id}/progress", response_model=ClaimLease, responses=conflicts(409))
async def progress(
    state: State, agent: WorkClaim, claim_id: ClaimId, body: ClaimProgress
) -> ClaimLease:
    """Report progress: a line in the run's log, shown live by GET /runs/{id}/stream.
    It does not extend the lease."""
    async with state.tx() as conn:
        until = await logic.progress(
            conn, agent, claim_id, message=body.message, percent=body.percent
        )
    return ClaimLease(claim_id=claim_id, lease_expires_at=until)


@router.post("/claims/{claim_id}/complete", response_model=ClaimEnded, responses=conflicts(409))
async def complete(
    state: State, agent: WorkClaim, claim_id: ClaimId, body: ClaimComplete
) -> ClaimEnded:
    """The step succeeded with `output` (checked against the type's `output_schema`: 422,
    and nothing changes, if it breaks it) and `cost`. 409 if the claim was lost."""
    zone = state.settings.default_timezone
    async with state.tx() as conn:
        await logic.complete(
            conn,
            agent,
            claim_id,
            output=body.output,
            cost=body.cost,
            now=await state.clock.now(conn),
            default_timezone=zone,
        )
    return ClaimEnded(claim_id=claim_id, state=RemoteStepState.SUCCEEDED)


@router.post("/claims/{claim_id}/fail", response_model=ClaimEnded, responses=conflicts(409))
async def fail(state: State, agent: WorkClaim, claim_id: ClaimId, body: ClaimFail) -> ClaimEnded:
    """The step failed; `retryable` says whether trying again could help (the task's
    retries decide). 409 if the claim was lost."""
    s = state.settings
    backoff = {"retry_base_seconds": s.retry_base_seconds, "retry_cap_seconds": s.retry_cap_seconds}
    async with state.tx() as conn:
        await logic.fail(
            conn, agent, claim_id, error=body.error, retryable=body.retryable, **backoff
        )
    return ClaimEnded(claim_id=claim_id, state=RemoteStepState.FAILED)


@router.post("/claims/{claim_id}/release", response_model=ClaimEnded, responses=conflicts(409))
async def release(state: State, agent: WorkClaim, claim_id: ClaimId) -> ClaimEnded:
    """Hand the step back unfinished (the claimer is stopping): it is queued again at once
    for the next claimer, with a new claim id, and no attempt is spent. This claim id
    answers 409 afterwards. 409 if the claim was lost already."""
    async with state.tx() as conn:
        await logic.release(conn, agent, claim_id)
    return ClaimEnded(claim_id=claim_id, state=RemoteStepState.QUEUED)
