"""Tasks: create, read, change, and steer their schedule."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import (
    AppState,
    PageQuery,
    RunsReadCtx,
    State,
    TaskRead,
    TasksRead,
    TasksReadCtx,
    TasksWriteCtx,
)
from api.idempotency import idempotent
from api.models import Occurrence, Occurrences, Page, RunPublic, TaskPublic
from api.openapi import conflicts
from api.streams import guarded, sse_response, task_stream
from pao.db import Conn
from pao.domain import tasks as logic
from pao.domain.tasks import Context
from pao.errors import InvalidInput
from pao.models import Task
from pao.schedule import Budget, off_loop, parse_schedule
from pao.schemas import (
    SchedulePreview,
    Snooze,
    TaskCreate,
    TaskFilter,
    TaskUpdate,
)
from pao.vocabulary import ScheduleKind, TaskStatus
from pao.zones import get_zone

router = APIRouter(prefix="/tasks", tags=["tasks"])

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)

# How many fire times pao.domain.tasks.hourly_peak samples (the first is next_run_at).
_PEAK_SAMPLE = 121


def _etag(task: TaskPublic, response: Response) -> TaskPublic:
    response.headers["ETag"] = f'"{task.version}"'
    return task


def _if_match(value: str | None) -> int | None:
    if value is None:
        return None
    raw = value.strip().removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise InvalidInput.one(("header", "If-Match"), 'must be a task version in quotes, e.g. "3"')
    return int(raw)


@router.get("/{task_id}", response_model=TaskPublic)
async def get_task(signed: TaskRead, task_id: uuid.UUID) -> Response:
    """One task."""
    # Declared first: routes are tried in order, and this is the one asked for most.
    task = TaskPublic.of(logic.visible_task(signed.agent, signed.task, task_id))
    # Serialised here, once: returned as a model, FastAPI would validate it again first.
    return Response(
        task.model_dump_json(),
        media_type="application/json",
        headers={"ETag": f'"{task.version}"'},
    )


@router.post("", status_code=201, response_model=TaskPublic, responses=conflicts(409))
async def create_task(
    request: Request, state: State, ctx: TasksWriteCtx, body: TaskCreate
) -> Response:
    """Create a task. Answers 201 with the task and its first `next_run_at`.

    Send `Idempotency-Key` to make retries safe: the same key and body get the
    first response again.
    """
    async with idempotent(request, state, ctx.actor) as guard:
        if guard.replay is not None:
            return guard.replay
        now = state.clock()  # the last measure of the database's clock, carried on
        await _check_schedule_off_loop(
            body.schedule_kind,
            body.schedule_expr,
            body.timezone or state.settings.default_timezone,
            created_at=now,
            now=now,
        )
        await state.discovery.ensure(state.registry.mcp_uses(body.payload))
        async with state.tx() as conn:
            task = await logic.create_task(conn, ctx, body)
            response = JSONResponse(
                TaskPublic.of(task).model_dump(mode="json"),
                status_code=201,
                headers={"Location": f"/tasks/{task.id}", "ETag": f'"{task.version}"'},
            )
            await guard.complete(conn, response)
    return response


async def _check_schedule_off_loop(
    kind: str, expr: str, timezone: str, *, created_at: datetime, now: datetime
) -> None:
    """Refuse a schedule whose fire times cannot be found within the search budget, on a
    thread of its own, before the task logic works them out again in its transaction."""

    def check() -> None:
        parsing, listing = Budget(), Budget()
        try:
            schedule = parse_schedule(kind, expr, timezone, created_at=created_at, budget=parsing)
            # The first fire time and the sample of them the hourly quota is judged from.
            schedule.upcoming(now, _PEAK_SAMPLE, budget=listing)
        except InvalidInput:
            if parsing.exhausted or listing.exhausted:
                raise
            # Any other mistake: the task logic reports it along with the rest of the body.

    await off_loop(check)


@router.post("/preview", response_model=Occurrences)
async def preview(state: State, agent: TasksRead, body: SchedulePreview) -> Occurrences:
    """The next fire times of a schedule, without storing anything.

    422 on `schedule_expr` when the rule cannot give `count` of them within the search
    budget or the next 100 years (a rule that ends, with COUNT or UNTIL, gives fewer).
    """
    now = state.clock()  # the last measure of the database's clock, carried on
    zone_name = body.timezone or state.settings.default_timezone

    def upcoming() -> list[datetime]:
        # One budget for the whole request: proving the rule fires, then the list.
        budget = Budget()
        schedule = parse_schedule(
            body.schedule_kind, body.schedule_expr, zone_name, created_at=now, budget=budget
        )
        times = schedule.preview(now, body.count, budget=budget)
        if body.schedule_kind != ScheduleKind.EVENT and (not times or times[0] >= logic.LATEST):
            # The task logic's own words for a schedule that cannot be stored.
            logic.check_schedule(
                body.schedule_kind, body.schedule_expr, zone_name, created_at=now, now=now
            )
        return times

    times = await off_loop(upcoming)
    zone = get_zone(zone_name)
    return Occurrences(items=[Occurrence.of(at, zone) for at in times])


@router.get("", response_model=Page[TaskPublic])
async def list_tasks(
    state: State,
    agent: TasksRead,
    page: PageQuery,
    only: Annotated[TaskFilter, Query()],
) -> Page[TaskPublic]:
    """Tasks, newest first. Non-admin agents see only their own."""
    async with state.tx() as conn:
        found = await logic.list_tasks(conn, agent, limit=page.limit, cursor=page.cursor, only=only)
    return Page(items=[TaskPublic.of(t) for t in found[0]], next_cursor=found[1])


@router.get(
    "/{task_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def stream_task(
    request: Request, state: State, ctx: RunsReadCtx, task_id: uuid.UUID
) -> StreamingResponse:
    """The task's runs live, as Server-Sent Events, until the client leaves.

    Needs `runs:read`, like the runs it shows. First a `run` event for each run
    not yet ended, then for every run as it starts: `run` (the run when first
    seen), `state`, `step`, `log`, and `run` again once it has ended. A
    `: heartbeat` comment comes every 15 seconds while nothing happens. The
    stream closes once the token no longer gives access to the task, and after
    `PAO_STREAM_MAX_SECONDS` (reconnect: it starts again from the runs as they
    are). An agent may hold `PAO_STREAMS_PER_AGENT` streams at once; the next
    is a 429.
    """
    async with state.tx() as conn:
        task = await logic.get_task(conn, ctx, task_id)
    await state.streams.ready()  # a 503 now rather than a stream that breaks
    guard = await state.streams.admit(
        ctx.actor, request.headers.get("authorization"), task.id, state.settings
    )
    return sse_response(
        guarded(
            state.streams,
            guard,
            task_stream(
                state.streams,
                state.pool,
                owner=ctx.owner,
                task_id=task.id,
                heartbeat=state.settings.stream_heartbeat_seconds,
                guard=guard,
            ),
        )
    )


@router.get("/{task_id}/occurrences", response_model=Occurrences)
async def occurrences(
    state: State,
    ctx: TasksReadCtx,
    task_id: uuid.UUID,
    count: Annotated[int, Query(ge=1, le=100)] = 10,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    past: bool = False,
) -> Occurrences:
    """Coming fire times from `from` (default now): UTC `at` and the task's local wall time.

    With `past=true`: the occurrences before `from` (default: all), newest first,
    each with its `decision` (queued, coalesced, skipped_paused, snoozed, missed,
    deduplicated, cancelled), a `detail` saying why, and the run it led to.
    """
    if from_ is not None and from_.tzinfo is None:
        raise InvalidInput.one(("query", "from"), "needs a UTC offset, e.g. 2026-01-01T00:00:00Z")
    if from_ is not None and not EARLIEST <= from_ < logic.LATEST:
        raise InvalidInput.one(
            ("query", "from"), f"must lie between 1970 and {logic.LATEST.year - 1}"
        )
    async with state.tx() as conn:
        task = await logic.get_task(conn, ctx, task_id)
        if past:
            rows = await logic.past_occurrences(conn, task, before=from_, limit=count)
        now = await state.clock.now(conn)
    zone = get_zone(task.timezone)
    if past:
        return Occurrences(items=[Occurrence.record(row, zone) for row in rows])
    if task.status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED) or (
        task.schedule_kind == ScheduleKind.EVENT
    ):
        return Occurrences(items=[])
    start = from_ or now

    def upcoming() -> list[datetime]:
        budget = Budget()  # one for the whole request, parsing included
        schedule = parse_schedule(
            task.schedule_kind,
            task.schedule_expr,
            task.timezone,
            created_at=task.created_at,
            budget=budget,
        )
        return schedule.preview(start, count, budget=budget)

    times = await off_loop(upcoming)
    return Occurrences(items=[Occurrence.of(at, zone) for at in times])


@router.put("/{task_id}", response_model=TaskPublic, responses=conflicts(409, 412))
async def update_task(
    response: Response,
    state: State,
    ctx: TasksWriteCtx,
    task_id: uuid.UUID,
    body: TaskUpdate,
    if_match: Annotated[str | None, Header()] = None,
) -> TaskPublic:
    """Change any subset of fields. A schedule change recomputes `next_run_at`.

    Send `If-Match` with the version from the task's `ETag` to refuse the change
    (412) when someone else changed the task meanwhile.
    """
    version = _if_match(if_match)
    changes = body.changes()
    if {"schedule_kind", "schedule_expr", "timezone"} & changes.keys():
        async with state.tx() as conn:
            task = await logic.get_task(conn, ctx, task_id)
        fields = {
            "schedule_kind": task.schedule_kind,
            "schedule_expr": task.schedule_expr,
            "timezone": task.timezone,
            **{k: v for k, v in changes.items() if v is not None},
        }
        await _check_schedule_off_loop(
            fields["schedule_kind"],
            fields["schedule_expr"],
            fields["timezone"],
            created_at=task.created_at,
            now=state.clock(),
        )
    if body.payload is not None:
        await state.discovery.ensure(state.registry.mcp_uses(body.payload))
    async with state.tx() as conn:
        task = await logic.update_task(conn, ctx, task_id, body, if_version=version)
    return _etag(TaskPublic.of(task), response)


@router.post(
    "/{task_id}/run_now", status_code=202, response_model=RunPublic, responses=conflicts(409)
)
async def run_now(state: State, ctx: TasksWriteCtx, task_id: uuid.UUID) -> RunPublic:
    """Queue one run now; the schedule is untouched. Answers 202 with the queued run."""
    async with state.tx() as conn:
        return RunPublic.of(await logic.run_now(conn, ctx, task_id))


@router.post("/{task_id}/snooze", response_model=TaskPublic, responses=conflicts(409))
async def snooze(state: State, ctx: TasksWriteCtx, task_id: uuid.UUID, body: Snooze) -> TaskPublic:
    """Delay the next execution by `seconds`."""
    async with state.tx() as conn:
        return TaskPublic.of(await logic.snooze_task(conn, ctx, task_id, body.seconds))


@router.post("/{task_id}/pause", response_model=TaskPublic, responses=conflicts(409))
async def pause(state: State, ctx: TasksWriteCtx, task_id: uuid.UUID) -> TaskPublic:
    """Stop firing until resumed."""
    return await _steer(state, logic.pause_task, ctx, task_id)


@router.post("/{task_id}/resume", response_model=TaskPublic, responses=conflicts(409))
async def resume(state: State, ctx: TasksWriteCtx, task_id: uuid.UUID) -> TaskPublic:
    """Fire again from now; what fell due while paused is not replayed."""
    return await _steer(state, logic.resume_task, ctx, task_id)


@router.post("/{task_id}/cancel", response_model=TaskPublic, responses=conflicts(409))
async def cancel(state: State, ctx: TasksWriteCtx, task_id: uuid.UUID) -> TaskPublic:
    """Cancel for good: queued work is dropped and a running run is stopped."""
    return await _steer(state, logic.cancel_task, ctx, task_id)


async def _steer(
    state: AppState,
    change: Callable[[Conn, Context, uuid.UUID], Awaitable[Task]],
    ctx: Context,
    task_id: uuid.UUID,
) -> TaskPublic:
    """Pause, resume or cancel: one change in one transaction, answered with the task."""
    async with state.tx() as conn:
        return TaskPublic.of(await change(conn, ctx, task_id))
