"""Events: published by agents (and by pipelines), they fire matching event tasks."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import EventsPublish, State, request_id
from api.idempotency import idempotent
from api.models import EventAccepted
from api.openapi import conflicts
from pao import events as logic
from pao.schemas import EventPublish

router = APIRouter(prefix="/events", tags=["events"])


@router.post("", status_code=202, response_model=EventAccepted, responses=conflicts(409))
async def publish(
    request: Request, state: State, agent: EventsPublish, body: EventPublish
) -> Response:
    """Publish an event; every active event task whose pattern matches fires once.

    Honours `Idempotency-Key` like `POST /tasks`.
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
            )
            visible = None if agent.is_admin else published.own_task_ids
            accepted = EventAccepted.of(
                published.event, published.runs, visible=visible
            ).model_dump(mode="json")
            response = JSONResponse(accepted, status_code=202)
            await guard.complete(conn, response)
    return response
