"""Response bodies (`…Public`) and their builders from rows."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Self, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from pao import costs
from pao.costs import Window
from pao.domain.budgets import Usage
from pao.domain.runs import RunView
from pao.models import Asset, Event, Run, Task
from pao.schemas import TaskFields
from pao.store.assets import RunAsset
from pao.vocabulary import AssetStatus, RemoteStepState, TaskStatus


class _FromRow(BaseModel):
    """A public view made of a row model's fields of the same names."""

    @classmethod
    def of(cls, row: object) -> Self:
        return cls.model_validate(row, from_attributes=True)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class TaskPublic(TaskFields):
    """A task: the fields it is written with (pao.schemas.TaskFields), as stored, and those
    only the server writes."""

    # Every field is always sent, so the schema calls each one required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    id: uuid.UUID
    timezone: str  # the server's default when none was given
    created_by: uuid.UUID  # the creator when none was given
    status: TaskStatus
    next_run_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    cost_estimate: Decimal = Field(
        description="the sum of its steps' declared costs when it was last written: what a "
        "run is expected to cost, and what admission reserves of its owner's budgets"
    )

    @classmethod
    def of(cls, task: Task) -> TaskPublic:
        # Built without validation: every field comes from a `tasks` row, already of its
        # type (GET /tasks/{id} spent about 1.5 % of its time validating it again).
        return cls.model_construct(**{name: getattr(task, name) for name in _TASK_FIELDS})


_TASK_FIELDS = tuple(TaskPublic.model_fields)


class Occurrence(BaseModel):
    """A fire time; with `past=true`, also what became of it and the run it led to."""

    at: datetime
    local: datetime
    decision: str | None = None
    detail: str | None = None
    decided_at: datetime | None = None
    run_id: uuid.UUID | None = None
    run_status: str | None = None

    @classmethod
    def of(cls, at: datetime, zone: ZoneInfo) -> Occurrence:
        return cls(at=at, local=at.astimezone(zone))

    @classmethod
    def record(cls, row: dict[str, Any], zone: ZoneInfo) -> Occurrence:
        return cls(
            at=row["nominal_at"],
            local=row["nominal_at"].astimezone(zone),
            decision=row["decision"],
            detail=row["detail"],
            decided_at=row["decided_at"],
            run_id=row["run_id"],
            run_status=row["run_status"],
        )


class Occurrences(BaseModel):
    items: list[Occurrence]


class RunPublic(BaseModel):
    id: uuid.UUID
    task_id: uuid.UUID
    status: str
    attempt: int
    scheduled_for: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    worker_id: str | None
    steps: list[Any]
    error: str | None
    cost: str = Field(
        description="what its steps were charged, as decimal text (each step's in its `cost`)"
    )

    @classmethod
    def of(cls, run: Run) -> RunPublic:
        duration = None
        if run.started_at and run.finished_at:
            duration = int((run.finished_at - run.started_at).total_seconds() * 1000)
        return cls(
            id=run.id,
            task_id=run.task_id,
            status=run.status,
            attempt=run.attempt,
            scheduled_for=run.scheduled_for,
            queued_at=run.queued_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            duration_ms=duration,
            worker_id=run.worker_id,
            steps=run.steps,
            error=run.error,
            cost=costs.text(run.cost),
        )


class RunAssetPublic(BaseModel):
    """An asset a run made: by one of its steps (`step_id`), or uploaded for it by a
    remote worker (with the step it held a claim on)."""

    id: uuid.UUID
    filename: str
    media_type: str
    size: int
    sha256: str
    step_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, asset: RunAsset) -> RunAssetPublic:
        return cls(
            id=asset.id,
            filename=asset.filename,
            media_type=asset.media_type,
            size=asset.size,
            sha256=asset.sha256.hex(),
            step_id=asset.step_id,
            created_at=asset.created_at,
        )


class RunDetail(RunPublic):
    """A run as GET /runs/{id} shows it: with the assets it made (the first 100; GET
    /assets?run_id= pages through all)."""

    assets: list[RunAssetPublic]

    @classmethod
    def of_view(cls, view: RunView) -> RunDetail:
        return cls(
            **RunPublic.of(view.run).model_dump(),
            assets=[RunAssetPublic.of(a) for a in view.assets],
        )


class RunLogPublic(_FromRow):
    id: int
    at: datetime
    level: str
    step_id: str | None
    message: str


class RunLogs(BaseModel):
    items: list[RunLogPublic]
    next_cursor: str | None


class EventAccepted(BaseModel):
    id: uuid.UUID
    type: str
    received_at: datetime
    queued: int

    @classmethod
    def of(cls, event: Event, runs: list[Run], *, visible: set[uuid.UUID] | None) -> EventAccepted:
        """`queued` counts only runs of tasks in `visible` (None: all, for admins)."""
        mine = [r for r in runs if visible is None or r.task_id in visible]
        return cls(id=event.id, type=event.type, received_at=event.received_at, queued=len(mine))


class ToolPublic(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]
    server: str | None
    kind: str = Field(
        "builtin",
        description="builtin, mcp (a tool of an MCP server) or remote (a task type, done by "
        "an agent that claims it)",
    )


class ToolServerPublic(BaseModel):
    """An MCP server of the tools file, as the API last saw it."""

    name: str
    transport: str  # stdio or http
    reachable: bool | None  # null: not asked yet
    # Why it failed, with its command line and stderr tail: for admins only, null for others.
    error: str | None
    checked_at: datetime | None
    tools: int


class ToolList(BaseModel):
    items: list[ToolPublic]
    servers: list[ToolServerPublic] = []


class AgentPublic(_FromRow):
    id: uuid.UUID
    name: str
    token_prefix: str
    scopes: list[str]
    expires_at: datetime | None
    disabled: bool
    created_at: datetime
    updated_at: datetime
    task_types: list[str] | None = Field(
        None, description="the task types its token may claim (work:claim); null: any"
    )
    budget_per_day: Decimal | None = Field(
        None, description="what its runs may be charged per day of its zone; null: no budget"
    )
    budget_per_month: Decimal | None = Field(
        None, description="what its runs may be charged per month of its zone; null: no budget"
    )
    max_runs_per_hour: int | None = Field(
        None, description="runs of its tasks it may start per hour; null: no limit"
    )
    timezone: str | None = Field(
        None, description="the zone its days and months are counted in; null: the default"
    )


class UsageWindow(BaseModel):
    """An agent's runs and cost in one window of its zone, against its budget for it."""

    starts_at: datetime
    ends_at: datetime
    runs: int = Field(description="runs (attempts) of its tasks queued in the window")
    cost: str = Field(description="what its runs were charged in the window, decimal text")
    budget: str | None = Field(description="its budget for the window; null: none")
    reserved: str = Field(
        description="held by its runs admitted but not yet charged (counted against the budget)"
    )
    remaining: str | None = Field(
        description="the budget less the cost and the reserved; null: no budget"
    )
    asset_bytes_added: int = Field(
        description="bytes of the assets it keeps that were created in the window (uploaded, "
        "or made by its runs); an asset deleted since no longer counts"
    )


class HourWindow(BaseModel):
    starts_at: datetime
    ends_at: datetime
    max_runs: int | None = Field(description="its max_runs_per_hour; null: no limit")
    runs_started: int | None = Field(
        description="runs admitted this hour (counted only under a limit; null: no limit)"
    )


class UsagePublic(BaseModel):
    """GET /agents/{id}/usage: today and this month in the agent's zone, this hour, and the
    asset bytes it keeps against its quota."""

    agent_id: uuid.UUID
    timezone: str
    today: UsageWindow
    this_month: UsageWindow
    this_hour: HourWindow
    asset_bytes: int = Field(description="bytes of assets it keeps now")
    asset_quota_bytes: int = Field(
        description="bytes of assets it may keep (PAO_ASSET_QUOTA_BYTES)"
    )

    @classmethod
    def of(cls, usage: Usage, *, asset_quota_bytes: int) -> UsagePublic:
        f, limits, w = usage.figures, usage.limits, usage.w
        reserved = costs.text(f.reserved)

        def window(
            window: Window, runs: int, spent: Decimal, budget: Decimal | None, added: int
        ) -> UsageWindow:
            left = usage.remaining(budget, spent)
            return UsageWindow(
                starts_at=window.starts_at,
                ends_at=window.ends_at,
                runs=runs,
                cost=costs.text(spent),
                budget=None if budget is None else costs.text(budget),
                reserved=reserved,
                remaining=None if left is None else costs.text(left),
                asset_bytes_added=added,
            )

        capped = limits.max_runs_per_hour is not None
        return cls(
            agent_id=limits.id,
            timezone=usage.zone.key,
            today=window(
                w.day, f.day_runs, f.day_spent, limits.budget_per_day, usage.assets.day_added
            ),
            this_month=window(
                w.month,
                f.month_runs,
                f.month_spent,
                limits.budget_per_month,
                usage.assets.month_added,
            ),
            this_hour=HourWindow(
                starts_at=w.hour.starts_at,
                ends_at=w.hour.ends_at,
                max_runs=limits.max_runs_per_hour,
                runs_started=f.hour_runs if capped else None,
            ),
            asset_bytes=usage.assets.kept,
            asset_quota_bytes=asset_quota_bytes,
        )


class AgentCreated(AgentPublic):
    token: str


class ProblemFieldError(BaseModel):
    field: str
    loc: list[str | int]
    message: str


class Problem(BaseModel):
    """An RFC 7807 problem: what every error response carries."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None
    errors: list[ProblemFieldError] | None = None


class TaskTypePublic(_FromRow):
    name: str
    description: str
    parameters_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    metadata: dict[str, Any]
    lease_seconds: int
    cost_per_call: Decimal | None
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class TaskTypePage(BaseModel):
    items: list[TaskTypePublic]
    next_cursor: str | None = None


class ClaimItem(BaseModel):
    claim_id: str = Field(description="the claim's token: send it back, keep it secret")
    run_id: uuid.UUID
    task_id: uuid.UUID
    step_id: str
    attempt: int
    parameters: dict[str, Any]
    idempotency_key: str = Field(description="the same for every delivery of this step")
    lease_expires_at: datetime


class ClaimList(BaseModel):
    items: list[ClaimItem]


class ClaimLease(BaseModel):
    claim_id: str
    lease_expires_at: datetime


class ClaimEnded(BaseModel):
    claim_id: str
    state: RemoteStepState


class ClaimOutcome(BaseModel):
    claim_id: str
    status: int = Field(
        description="200: the step succeeded; 404 (unknown claim) or 409 (claim lost): this "
        "item changed nothing and the claimer should stop working on it"
    )
    state: RemoteStepState | None = Field(None, description="`succeeded` when status is 200")
    type: str | None = Field(None, description="the problem type when status is not 200")
    detail: str | None = None


class ClaimOutcomes(BaseModel):
    items: list[ClaimOutcome] = Field(description="one per item sent, in the same order")


class AssetPublic(BaseModel):
    """An asset: a stored file. `sha256` (hex) is also its content's ETag."""

    id: uuid.UUID
    label: str
    filename: str
    media_type: str = Field(description="What the content is, sniffed from its first bytes.")
    size: int
    sha256: str
    tags: list[str]
    status: AssetStatus
    created_by: uuid.UUID
    run_id: uuid.UUID | None
    created_at: datetime

    @classmethod
    def of(cls, asset: Asset) -> AssetPublic:
        return cls(
            id=asset.id,
            label=asset.label,
            filename=asset.filename,
            media_type=asset.media_type,
            size=asset.size,
            sha256=asset.sha256.hex(),
            tags=asset.tags,
            status=asset.status,
            created_by=asset.created_by,
            run_id=asset.run_id,
            created_at=asset.created_at,
        )


class AssetLink(BaseModel):
    """A signed URL that reads the asset's content without a token until `expires_at`."""

    url: str
    expires_at: datetime
