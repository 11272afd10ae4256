"""Runs: one per attempt at an occurrence."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api.deps import PageQuery, RunsRead, State, TasksWrite, request_id
from api.models import Page, RunDetail, RunLogPublic, RunLogs, RunPublic
from api.openapi import conflicts
from api.streams import guarded, run_stream, sse_response
from pao.domain import runs as logic
from pao.schemas import RunStatusField
from pao.visibility import owner_filter

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("", response_model=Page[RunPublic])
async def list_runs(
    state: State,
    agent: RunsRead,
    page: PageQuery,
    task_id: uuid.UUID | None = None,
    status: RunStatusField | None = None,
) -> Page[RunPublic]:
    """Runs, newest first. Non-admin agents see only runs of their own tasks."""
    async with state.tx() as conn:
        items, next_cursor = await logic.list_runs(
            conn, agent, limit=page.limit, cursor=page.cursor, task_id=task_id, status=status
        )
    return Page(items=[RunPublic.of(r) for r in items], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunDetail)
async def get_run(state: State, agent: RunsRead, run_id: uuid.UUID) -> RunDetail:
    """One run with its steps and their outputs; a step waiting for a remote worker
    (`status: "waiting"`) shows its holder and last progress under `remote`. `assets` lists
    the files the run made (`http.request` with `save_body`, MCP images, audio and
    resources, remote workers' uploads with its `run_id`), each with the step that made it."""
    async with state.tx() as conn:
        return RunDetail.of_view(await logic.get_run_view(conn, agent, run_id))


@router.get("/{run_id}/logs", response_model=RunLogs)
async def run_logs(
    state: State,
    agent: RunsRead,
    run_id: uuid.UUID,
    page: PageQuery,
) -> RunLogs:
    """The run's log lines, oldest first; pass `next_cursor` back for more."""
    async with state.tx() as conn:
        items, next_cursor = await logic.list_logs(
            conn, agent, run_id, limit=page.limit, cursor=page.cursor
        )
    return RunLogs(items=[RunLogPublic.of(line) for line in items], next_cursor=next_cursor)


STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}
}


@router.get("/{run_id}/stream", response_class=StreamingResponse, responses=STREAM_DOC)
async def stream_run(
    request: Request, state: State, agent: RunsRead, run_id: uuid.UUID
) -> StreamingResponse:
    """The run live, as Server-Sent Events, until it has ended.

    First a `run` event with the run as it is now (as `GET /runs/{id}` shows
    it), then `state` (status changes), `step` (`{run_id, index, step}` when a
    step starts or ends) and `log` events as they happen, and a last `run`
    event with the ended run; then the stream closes. A `: heartbeat` comment
    comes every 15 seconds while nothing happens. The stream also closes once
    the token no longer gives access to the run, and after
    `PAO_STREAM_MAX_SECONDS` (reconnect: it starts again from the run as it is).
    An agent may hold `PAO_STREAMS_PER_AGENT` streams at once; the next is a 429.
    """
    async with state.tx() as conn:
        run = await logic.get_run(conn, agent, run_id)
    await state.streams.ready()  # a 503 now rather than a stream that breaks
    guard = await state.streams.admit(
        agent, request.headers.get("authorization"), run.task_id, state.settings
    )
    return sse_response(
        guarded(
            state.streams,
            guard,
            run_stream(
                state.streams,
                state.pool,
                owner=owner_filter(agent),
                task_id=run.task_id,
                run_id=run.id,
                heartbeat=state.settings.stream_heartbeat_seconds,
                guard=guard,
            ),
        )
    )


@router.post(
    "/{run_id}/cancel", status_code=202, response_model=RunPublic, responses=conflicts(409)
)
async def cancel_run(
    request: Request, state: State, agent: TasksWrite, run_id: uuid.UUID
) -> RunPublic:
    """Stop this run: a queued run is cancelled at once, a running one by its worker."""
    async with state.tx() as conn:
        return RunPublic.of(
            await logic.cancel_run(conn, agent, run_id, request_id=request_id(request))
        )
