"""Events: published by agents (and by pipelines), they fire matching event tasks."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import EventsPublish, State, request_id
from api.idempotency import idempotent
from api.models import EventAccepted
from api.openapi import conflicts
from pao.domain import events as logic
from pao.schemas import EventPublish
from pao.visibility import owner_filter

router = APIRouter(prefix="/events", tags=["events"])


@router.post("", status_code=202, response_model=EventAccepted, responses=conflicts(409))
async def publish(
    request: Request, state: State, agent: EventsPublish, body: EventPublish
) -> Response:
    """Publish an event: each active event task of this agent whose pattern matches fires once.

    `audience` ("*", or a list of agent ids) reaches other agents' event tasks too; it needs
    the events:broadcast scope. An event that would take a task's owner past its hourly quota
    does not fire that task (the task's occurrences say so). Honours `Idempotency-Key` like
    `POST /tasks`.
    """
    async with idempotent(request, state, agent) as guard:
        if guard.replay is not None:
            return guard.replay
        async with state.tx() as conn:
            published = await logic.publish(
                conn,
                actor=agent,
                type=body.type,
                payload=body.payload,
                request_id=request_id(request),
                limits=logic.Limits.of(state.settings),
                audience=body.audience,
            )
            # The runs it queued that the publisher may see: all for an admin.
            visible = None if owner_filter(agent) is None else published.own_task_ids
            accepted = EventAccepted.of(
                published.event, published.runs, visible=visible
            ).model_dump(mode="json")
            response = JSONResponse(accepted, status_code=202)
            await guard.complete(conn, response)
    return response
