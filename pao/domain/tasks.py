"""What agents do with tasks: plain functions over a connection.

Every function checks ownership itself (`owner` None means an admin, who may
see everything), validates everything before writing anything, and appends
one audit row in the same transaction as the change.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pao import costs, pagination
from pao.clock import DatabaseClock
from pao.db import Conn
from pao.domain import assets, budgets, task_types
from pao.domain.agents import check_step_scopes
from pao.errors import (
    Conflict,
    FieldError,
    Forbidden,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
)
from pao.models import Agent, Run, Task
from pao.netguard import private_target
from pao.pipeline import Pipeline, asset_references, load_pipeline, validate_payload
from pao.schedule import Schedule, off_loop, parse_schedule
from pao.schemas import TaskCreate, TaskFields, TaskFilter, TaskUpdate
from pao.store import agents, audit, queue, runs, tasks
from pao.store import occurrences as occurrence_store
from pao.store.occurrences import DecisionRecord
from pao.store.queue import QueueRequest
from pao.templates import parse_template
from pao.tools import ToolRegistry
from pao.visibility import may_see, owner_filter
from pao.vocabulary import SCHEDULED_KINDS, Decision, QueueReason, ScheduleKind, TaskStatus

# Fire times stay well inside what datetime can represent, whatever is added to them.
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# Resuming records what fell due while paused, up to this many occurrences.
MAX_PAUSE_RECORDS = 1000


@dataclass(frozen=True)
class Quotas:
    """Per-agent ceilings (0: none): live (active or paused) tasks, and the summed
    peak occurrences an hour of their schedules."""

    max_active_tasks: int = 0
    max_occurrences_per_hour: int = 0


@dataclass(frozen=True)
class Context:
    """Who is acting, and the request they act in."""

    actor: Agent
    request_id: str | None
    registry: ToolRegistry
    default_timezone: str
    clock: DatabaseClock  # every `now` is the database's, whatever this host's clock says
    quotas: Quotas = Quotas()
    http_allow: tuple[str, ...] = ()  # PAO_HTTP_ALLOW: private targets the operator allows

    @property
    def owner(self) -> uuid.UUID | None:
        return owner_filter(self.actor)


def _merge(errors: list[FieldError], exc: InvalidInput) -> None:
    errors.extend(exc.errors)


def check_schedule(
    kind: str, expr: str, timezone: str, *, created_at: datetime, now: datetime
) -> tuple[Schedule, datetime | None]:
    """Parse a schedule and find its first fire time after `now`; InvalidInput if it never fires."""
    schedule = parse_schedule(kind, expr, timezone, created_at=created_at)
    if kind not in SCHEDULED_KINDS:
        return schedule, None
    first = schedule.next_after(now)
    if first is None:
        message = (
            "is in the past; give a future time"
            if kind == ScheduleKind.ONCE
            else "never fires after now; check the expression"
        )
        raise InvalidInput.one(("schedule_expr",), message)
    if first >= LATEST:
        raise InvalidInput.one(
            ("schedule_expr",), f"first fires after {LATEST.year - 1}; give a nearer time"
        )
    return schedule, first


def _private_http_targets(pipeline: Pipeline, allow: tuple[str, ...]) -> list[FieldError]:
    """http.request steps whose URL is written as a private address: refused now, not at
    every run (the worker still checks every address it connects to)."""
    errors = []
    for index, step in enumerate(pipeline.steps):
        url = step.with_.get("url")
        if step.uses != "http.request" or not isinstance(url, str):
            continue
        why = private_target(url, allow)
        if why is not None:
            errors.append(
                FieldError(
                    ("payload", "pipeline", index, "with", "url"),
                    f"{why}; steps may only reach public hosts unless an operator allows "
                    "this one with PAO_HTTP_ALLOW",
                )
            )
    return errors


def estimate(pipeline: Pipeline, registry: ToolRegistry) -> tuple[Decimal, list[str]]:
    """The sum of a pipeline's declared step costs (every step counted, whatever its `if`),
    and the paid steps as `id (cost)`."""
    total, paid = costs.ZERO, []
    for step in pipeline.steps:
        cost = registry.cost_of(step.uses)
        if cost:
            total += cost
            paid.append(f"{step.id} ({costs.text(cost)})")
    return total, paid


def _priced(ctx: Context, fields: dict[str, Any], *, check: bool) -> Decimal:
    """The task's estimate, refused (when `check`) if it passes its budget_per_run."""
    total, paid = estimate(load_pipeline(fields["payload"]), ctx.registry)
    budget = fields.get("budget_per_run")
    if check and budget is not None and total > budget:
        raise InvalidInput.one(
            ("budget_per_run",),
            f"the steps' declared costs add up to {costs.text(total)}: {', '.join(paid)}; "
            f"more than budget_per_run ({costs.text(budget)}). Raise budget_per_run or use "
            "cheaper steps",
        )
    return total


def _validate(
    ctx: Context,
    fields: dict[str, Any],
    *,
    created_at: datetime,
    now: datetime,
    schedule: bool = True,
) -> datetime | None:
    """Check a whole task; return its next fire time. Raises with every error found.

    With `schedule` False (an edit that leaves the schedule alone) the schedule
    is not checked again: a once task whose time has passed may still be renamed.
    """
    errors: list[FieldError] = []
    next_run_at: datetime | None = None
    try:
        if schedule:
            _, next_run_at = check_schedule(
                fields["schedule_kind"],
                fields["schedule_expr"],
                fields["timezone"],
                created_at=created_at,
                now=now,
            )
    except InvalidInput as exc:
        _merge(errors, exc)
    try:
        pipeline = validate_payload(
            fields["payload"], ctx.registry, schedule_kind=fields["schedule_kind"]
        )
    except InvalidInput as exc:
        _merge(errors, exc)
    else:
        errors += _private_http_targets(pipeline, ctx.http_allow)
    if fields.get("dedupe_key") is not None:
        try:
            parse_template(fields["dedupe_key"])
        except Exception as exc:
            errors.append(FieldError(("dedupe_key",), str(exc)))
    if errors:
        raise InvalidInput(errors)
    return next_run_at


# Fire times a schedule is sampled for. No schedule fires more than once a minute, so a
# full hour holds at most 60; twice that, plus one, also reaches the first full hour of the
# next stretch when fewer than 60 of the current one are left (every minute from 9 to 17,
# asked at 17:23: 37 today, then 09:00-09:59 tomorrow).
_PEAK_SAMPLE = 121


def hourly_peak(kind: str, expr: str, timezone: str, *, created_at: datetime, now: datetime) -> int:
    """The most occurrences a schedule fires in any hour, judged from its next fire times.

    Event tasks count 0: events are paced by the request rate limit instead.
    """
    if kind not in SCHEDULED_KINDS:
        return 0
    schedule = parse_schedule(kind, expr, timezone, created_at=created_at)
    times = schedule.upcoming(now, _PEAK_SAMPLE)
    peak, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - timedelta(hours=1):
            start += 1
        peak = max(peak, end - start + 1)
    return peak


async def _check_quotas(
    conn: Conn,
    ctx: Context,
    owner: uuid.UUID,
    *,
    peak: int,
    exclude: uuid.UUID | None = None,
    count_task: bool = True,
) -> None:
    """Refuse a task that would take `owner` past a quota, naming it and how to raise it."""
    quotas = ctx.quotas
    if not (quotas.max_active_tasks or quotas.max_occurrences_per_hour):
        return
    live, hourly = await tasks.owner_load(conn, owner, exclude=exclude)
    if count_task and quotas.max_active_tasks and live + 1 > quotas.max_active_tasks:
        raise QuotaExceeded(
            f"the agent already has {live} active or paused tasks, its quota "
            f"(PAO_MAX_ACTIVE_TASKS={quotas.max_active_tasks}); cancel some, or ask the "
            "operator to raise PAO_MAX_ACTIVE_TASKS"
        )
    limit = quotas.max_occurrences_per_hour
    if limit and hourly + peak > limit:
        raise QuotaExceeded(
            f"this schedule fires up to {peak} times an hour and the agent's other tasks "
            f"{hourly}: more than its quota of {limit} occurrences an hour "
            "(PAO_MAX_OCCURRENCES_PER_HOUR); fire less often, cancel other tasks, or ask "
            "the operator to raise PAO_MAX_OCCURRENCES_PER_HOUR"
        )


async def _check_step_scopes(
    conn: Conn, ctx: Context, payload: dict[str, Any], owner_id: uuid.UUID
) -> None:
    """Refuse steps the task's owner may not run (`ToolSpec.required_scope`): a step acts
    for its owner, whoever writes the task. Checked again when each step runs."""
    steps = load_pipeline(payload).steps  # validated already
    needs = [(step, spec) for step in steps if (spec := ctx.registry.resolve(step.uses))]
    if not any(spec.scopes_needed(step.with_) for step, spec in needs):
        return
    owner, whose = await _owner(conn, ctx, owner_id)
    for step, spec in needs:
        check_step_scopes(owner, step.id, spec, step.with_, whose=whose)


async def _owner(conn: Conn, ctx: Context, owner_id: uuid.UUID) -> tuple[Agent, str]:
    """The task's owner, and how a message names it."""
    if owner_id == ctx.actor.id:
        return ctx.actor, "this agent"
    found = await agents.get_agent(conn, owner_id)
    if found is None:
        raise NotFound(f"no agent {owner_id}")
    return found, f"the task's owner (agent {found.name!r})"


async def _check_asset_inputs(
    conn: Conn, ctx: Context, payload: dict[str, Any], owner_id: uuid.UUID
) -> None:
    """Refuse asset ids, written out in inputs that take assets, that the task's owner may
    not use (a 422 naming each field): a step uses assets as its owner, whoever writes the
    task. Ids that `${…}` lookups give are checked when their step runs."""
    refs = asset_references(load_pipeline(payload), ctx.registry)  # validated already
    if refs:
        owner, whose = await _owner(conn, ctx, owner_id)
        await assets.check_step_inputs(conn, owner, refs, whose=whose)


async def _check_owner(conn: Conn, ctx: Context, created_by: uuid.UUID | None) -> uuid.UUID:
    if created_by is None or created_by == ctx.actor.id:
        return ctx.actor.id
    if not ctx.actor.is_admin:
        raise Forbidden("only an admin may set created_by to another agent; leave it out")
    if not await tasks.owner_exists(conn, created_by):
        raise InvalidInput.one(("created_by",), "no such agent; give the id of an existing agent")
    return created_by


async def create_task(conn: Conn, ctx: Context, data: TaskCreate) -> Task:
    now = await ctx.clock.now(conn)
    fields = data.model_dump()
    fields["timezone"] = fields["timezone"] or ctx.default_timezone
    await task_types.refresh_registry(conn, ctx.registry, fields["payload"])
    # Schedule math and schema checks run off the event loop: a costly rule holds a thread
    # of the schedule pool, never every other request of this API process.
    next_run_at = await off_loop(functools.partial(_validate, ctx, fields, created_at=now, now=now))
    fields["created_by"] = await _check_owner(conn, ctx, data.created_by)
    await _check_step_scopes(conn, ctx, fields["payload"], fields["created_by"])
    await _check_asset_inputs(conn, ctx, fields["payload"], fields["created_by"])
    fields["hourly_peak"] = await off_loop(
        functools.partial(
            hourly_peak,
            fields["schedule_kind"],
            fields["schedule_expr"],
            fields["timezone"],
            created_at=now,
            now=now,
        )
    )
    await _check_quotas(conn, ctx, fields["created_by"], peak=fields["hourly_peak"])
    fields["cost_estimate"] = _priced(ctx, fields, check=True)
    fields["next_run_at"] = next_run_at
    fields["created_at"] = now
    task = await tasks.insert_task(conn, fields)
    await audit.record(
        conn,
        actor_id=ctx.actor.id,
        action="task.create",
        target_type="task",
        target_id=task.id,
        request_id=ctx.request_id,
    )
    return task


async def get_task(conn: Conn, ctx: Context, task_id: uuid.UUID, *, lock: bool = False) -> Task:
    task = await tasks.get_task(conn, task_id, owner=ctx.owner, for_update=lock)
    return visible_task(ctx.actor, task, task_id)


def visible_task(actor: Agent, task: Task | None, task_id: uuid.UUID) -> Task:
    """`task`, read without an owner filter (along with the sign-in), if `actor` may see it."""
    if task is None or not may_see(actor, task.created_by):
        raise NotFound(f"no task {task_id}")
    return task


ALL_TASKS = TaskFilter()


async def list_tasks(
    conn: Conn,
    actor: Agent,
    *,
    limit: int,
    cursor: str | None,
    only: TaskFilter = ALL_TASKS,
) -> tuple[list[Task], str | None]:
    """A page of the tasks `actor` may see, newest first, and the cursor of the next page."""
    rows = await tasks.list_tasks(
        conn,
        owner=owner_filter(actor),
        limit=limit + 1,
        after=pagination.decode_cursor(cursor),
        status=only.status,
        created_by=only.created_by,
        schedule_kind=only.schedule_kind,
    )
    return pagination.page(rows, limit, lambda t: pagination.encode_cursor(t.created_at, t.id))


async def past_occurrences(
    conn: Conn, task: Task, *, before: datetime | None, limit: int
) -> list[dict[str, Any]]:
    """A task's decided occurrences before `before` (None: all), newest first, each with its
    decision and the run it led to; `task` as `get_task` gave it, so seen by the caller."""
    return await occurrence_store.list_for_task(conn, task.id, before=before, limit=limit)


# What an update may change: the fields a task is created with.
_EDITABLE = tuple(TaskFields.model_fields)


async def update_task(
    conn: Conn, ctx: Context, task_id: uuid.UUID, data: TaskUpdate, *, if_version: int | None
) -> Task:
    given = data.changes()
    task = await get_task(conn, ctx, task_id, lock=True)
    if if_version is not None and task.version != if_version:
        raise PreconditionFailed(
            f"the task is at version {task.version}, not {if_version}; fetch it again and retry"
        )
    if task.status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED):
        raise Conflict(f"the task is {task.status}; create a new task instead")
    fields = {name: getattr(task, name) for name in _EDITABLE}
    fields.update(given)
    now = await ctx.clock.now(conn)
    schedule_changed = any(
        fields[f] != getattr(task, f) for f in ("schedule_kind", "schedule_expr", "timezone")
    )
    await task_types.refresh_registry(conn, ctx.registry, fields["payload"])
    next_run_at = await off_loop(
        functools.partial(
            _validate, ctx, fields, created_at=task.created_at, now=now, schedule=schedule_changed
        )
    )
    if "created_by" in given:
        fields["created_by"] = await _check_owner(conn, ctx, given["created_by"])
    fields["hourly_peak"] = task.hourly_peak
    fields["cost_estimate"] = _priced(
        ctx, fields, check="payload" in given or "budget_per_run" in given
    )
    owner_changed = fields["created_by"] != task.created_by
    if owner_changed or "payload" in given:
        await _check_step_scopes(conn, ctx, fields["payload"], fields["created_by"])
        await _check_asset_inputs(conn, ctx, fields["payload"], fields["created_by"])
    if schedule_changed:
        fields["hourly_peak"] = await off_loop(
            functools.partial(
                hourly_peak,
                fields["schedule_kind"],
                fields["schedule_expr"],
                fields["timezone"],
                created_at=task.created_at,
                now=now,
            )
        )
    if schedule_changed or owner_changed:
        await _check_quotas(
            conn,
            ctx,
            fields["created_by"],
            peak=fields["hourly_peak"],
            exclude=task.id,
            count_task=owner_changed,
        )
    if not schedule_changed:
        # Kept as stored, with the release that computed it: an edit of anything else never
        # hides a time an older tzdata computed from the scheduler's recompute.
        next_run_at = task.next_run_at
        fields["tzdata_version"] = task.tzdata_version
    else:
        taken = await runs.take_back_scheduled(conn, task.id, reason="the schedule changed")
        await occurrence_store.redecide(
            conn,
            [work_id for work_id, _ in taken],
            decision=Decision.CANCELLED,
            detail="the schedule changed",
        )
        if task.status is TaskStatus.PAUSED:
            next_run_at = None
    fields["next_run_at"] = next_run_at
    updated = await tasks.update_task(conn, task.id, fields)
    if (updated.priority, updated.claim_key, updated.claim_limit) != (
        task.priority,
        task.claim_key,
        task.claim_limit,
    ):
        await runs.refresh_queued(conn, task.id)
    await audit.record(
        conn,
        actor_id=ctx.actor.id,
        action="task.update",
        target_type="task",
        target_id=task.id,
        request_id=ctx.request_id,
        detail={"fields": sorted(given)},
    )
    return updated


async def _transition(
    conn: Conn,
    ctx: Context,
    task: Task,
    *,
    action: str,
    status: TaskStatus,
    next_run_at: datetime | None,
    detail: dict[str, Any] | None = None,
) -> Task:
    updated = await tasks.set_task_state(conn, task.id, status=status, next_run_at=next_run_at)
    await audit.record(
        conn,
        actor_id=ctx.actor.id,
        action=action,
        target_type="task",
        target_id=task.id,
        request_id=ctx.request_id,
        detail=detail,
    )
    return updated


async def pause_task(conn: Conn, ctx: Context, task_id: uuid.UUID) -> Task:
    """Stop firing; occurrences already queued but not started are taken back."""
    task = await get_task(conn, ctx, task_id, lock=True)
    if task.status is TaskStatus.PAUSED:
        return task
    if task.status is not TaskStatus.ACTIVE:
        raise Conflict(f"the task is {task.status}; only an active task can be paused")
    taken = await runs.take_back_scheduled(conn, task.id, reason="the task was paused")
    await occurrence_store.redecide(
        conn,
        [work_id for work_id, _ in taken],
        decision=Decision.SKIPPED_PAUSED,
        detail="the task was paused",
    )
    return await _transition(
        conn, ctx, task, action="task.pause", status=TaskStatus.PAUSED, next_run_at=None
    )


def _resumed_at(task: Task, now: datetime) -> tuple[datetime | None, list[datetime]]:
    """A resumed task's next fire time, and the times that fell due while it was paused."""
    if task.schedule_kind not in SCHEDULED_KINDS:
        return None, []
    schedule = parse_schedule(
        task.schedule_kind, task.schedule_expr, task.timezone, created_at=task.created_at
    )
    skipped: list[datetime] = []
    if task.paused_at is not None:
        skipped = [t for t in schedule.upcoming(task.paused_at, MAX_PAUSE_RECORDS + 1) if t <= now]
    return schedule.next_after(now), skipped


async def resume_task(conn: Conn, ctx: Context, task_id: uuid.UUID) -> Task:
    """Fire again from now: what fell due while paused is not replayed."""
    task = await get_task(conn, ctx, task_id, lock=True)
    if task.status is TaskStatus.ACTIVE:
        return task
    if task.status is not TaskStatus.PAUSED:
        raise Conflict(f"the task is {task.status}; only a paused task can be resumed")
    now = await ctx.clock.now(conn)
    next_run_at, skipped = await off_loop(functools.partial(_resumed_at, task, now))
    if skipped:
        await occurrence_store.record_many(
            conn,
            [
                DecisionRecord(task.id, t, Decision.SKIPPED_PAUSED, None, "the task was paused")
                for t in skipped[:MAX_PAUSE_RECORDS]
            ],
        )
    if next_run_at is None and task.schedule_kind in SCHEDULED_KINDS:
        return await _transition(
            conn, ctx, task, action="task.resume", status=TaskStatus.COMPLETED, next_run_at=None
        )
    return await _transition(
        conn, ctx, task, action="task.resume", status=TaskStatus.ACTIVE, next_run_at=next_run_at
    )


async def snooze_task(conn: Conn, ctx: Context, task_id: uuid.UUID, seconds: int) -> Task:
    """Delay the next execution by `seconds`."""
    task = await get_task(conn, ctx, task_id, lock=True)
    if task.status is not TaskStatus.ACTIVE:
        raise Conflict(f"the task is {task.status}; only an active task can be snoozed")
    taken = await runs.take_back_scheduled(conn, task.id, reason="snoozed")
    pending = [t[1] for t in taken] + ([task.next_run_at] if task.next_run_at else [])
    if not pending:
        raise Conflict("the task has no next run to snooze (event tasks run when events arrive)")
    nominal = min(pending)
    moved_to = nominal + timedelta(seconds=seconds)
    detail = f"snoozed by {seconds}s to {moved_to.isoformat()}"
    await occurrence_store.redecide(
        conn, [work_id for work_id, _ in taken], decision=Decision.SNOOZED, detail=detail
    )
    await occurrence_store.record_many(
        conn, [DecisionRecord(task.id, nominal, Decision.SNOOZED, None, detail)]
    )
    return await _transition(
        conn,
        ctx,
        task,
        action="task.snooze",
        status=TaskStatus.ACTIVE,
        next_run_at=moved_to,
        detail={"seconds": seconds, "was": nominal.isoformat()},
    )


async def cancel_task(conn: Conn, ctx: Context, task_id: uuid.UUID) -> Task:
    """Permanent: queued work is dropped and running work is asked to stop."""
    task = await get_task(conn, ctx, task_id, lock=True)
    if task.status is TaskStatus.CANCELLED:
        return task
    if task.status is TaskStatus.COMPLETED:
        raise Conflict("the task is already completed")
    dropped, stopping = await runs.cancel_task_work(conn, task.id)
    await occurrence_store.redecide(
        conn, dropped, decision=Decision.CANCELLED, detail="the task was cancelled"
    )
    return await _transition(
        conn,
        ctx,
        task,
        action="task.cancel",
        status=TaskStatus.CANCELLED,
        next_run_at=None,
        detail={"dropped": len(dropped), "stopping": stopping},
    )


async def run_now(conn: Conn, ctx: Context, task_id: uuid.UUID) -> Run:
    """Queue one run of the task now; the schedule is untouched. BudgetExceeded or
    RunRateLimited (429 with Retry-After) if its owner's budget or run rate has no room."""
    task = await get_task(conn, ctx, task_id, lock=True)
    if task.status is TaskStatus.CANCELLED:
        raise Conflict("the task is cancelled; create a new task instead")
    now = await ctx.clock.now(conn)
    admission = await budgets.admission(
        conn, task.created_by, now=now, default_timezone=ctx.default_timezone
    )
    if admission is not None:
        refusal = admission.decide(task.cost_estimate)
        if refusal is not None:
            raise refusal.error()
    detail = f"run now by agent {ctx.actor.name}"
    request = QueueRequest.of(task, now, QueueReason.RUN_NOW, detail=detail)
    run = await queue.queue(conn, request)  # wakes the workers at commit
    if run is None:  # same microsecond as another run_now of this task
        raise Conflict("a run of this task was queued at this very instant; retry")
    if admission is not None:
        await admission.record(conn, {run.due_work_id: task.cost_estimate}, runs=1)
    await audit.record(
        conn,
        actor_id=ctx.actor.id,
        action="task.run_now",
        target_type="task",
        target_id=task.id,
        request_id=ctx.request_id,
        detail={"run_id": str(run.id)},
    )
    return run
