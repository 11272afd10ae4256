"""Rows as the database returns them; typed, immutable."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NotRequired, TypedDict

from pao.vocabulary import (
    AssetStatus,
    BackoffStrategy,
    LogLevel,
    MisfirePolicy,
    RunStatus,
    ScheduleKind,
    Scope,
    StepStatus,
    TaskStatus,
)

# Every scope a token may hold, in the order they are listed; pao.vocabulary.Scope says each.
SCOPES: tuple[str, ...] = tuple(Scope)


#: Text to member by a dict lookup (`StepStatus(text)` only for a word not in the set, to
#: refuse it): a page of runs holds many steps.
_STEP_STATUSES: dict[str, StepStatus] = {s.value: s for s in StepStatus}


def _set(row: object, name: str, value: object) -> None:
    """Replace a field of a frozen row: psycopg gives text, the row holds the enum member."""
    object.__setattr__(row, name, value)


class StepRecord(TypedDict):
    """One step of a run as `runs.steps` stores it and live streams send it (JSON object).

    Written by the worker as the step goes: `id`, `uses`, `status` and `started_at` from the
    start, `input` once rendered, then `output` and `duration_ms`, or `error`, or `detail`.
    A TypedDict, not a class: records travel as JSON to the database and the streams as they
    are, with no conversion on the worker's path.
    """

    id: str
    uses: str
    status: StepStatus
    started_at: str  #: ISO 8601, with its offset
    input: NotRequired[dict[str, Any]]  #: the rendered `with`
    output: NotRequired[Any]  #: what the tool answered, made storable
    error: NotRequired[str]  #: why it failed
    detail: NotRequired[str]  #: why it was skipped
    duration_ms: NotRequired[int]
    #: the attempt whose saved output a resumed attempt reused instead of running the step
    resumed_from: NotRequired[int]
    #: a remote step's offer (`remote_steps.id`) while it is out
    remote_step: NotRequired[int]
    #: what the step was charged (its tool's cost_per_call, or a remote step's reported
    #: cost), as decimal text; absent for a free step
    cost: NotRequired[str]


@dataclass(frozen=True)
class Agent:
    id: uuid.UUID
    name: str
    token_prefix: str
    scopes: list[Scope]
    expires_at: datetime | None
    disabled: bool
    created_at: datetime
    updated_at: datetime
    # The task types its token may claim (work:claim); None: any. Read by the admin
    # statements and the claim check, not by sign-in.
    task_types: list[str] | None = None
    # Budgets, run rate and the zone they are counted in (None: none, the default zone).
    # Read by the admin statements, not by sign-in.
    budget_per_day: Decimal | None = None
    budget_per_month: Decimal | None = None
    max_runs_per_hour: int | None = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        _set(self, "scopes", [Scope(s) for s in self.scopes])

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def has_scope(self, scope: str) -> bool:
        """An admin holds every scope."""
        return scope in self.scopes or self.is_admin


@dataclass(frozen=True)
class Task:
    id: uuid.UUID
    created_by: uuid.UUID
    title: str
    description: str
    schedule_kind: ScheduleKind
    schedule_expr: str
    timezone: str
    payload: dict[str, Any]
    priority: int
    dedupe_key: str | None
    dedupe_window_seconds: int
    max_retries: int
    backoff_strategy: BackoffStrategy
    concurrency_key: str | None
    status: TaskStatus
    next_run_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    misfire_policy: MisfirePolicy
    misfire_grace_seconds: int
    paused_at: datetime | None
    condition_state: bool | None
    concurrency_limit: int | None = None
    claim_key: str | None = None
    claim_limit: int | None = None
    hourly_peak: int = 0
    budget_per_run: Decimal | None = None
    # The sum of its steps' declared costs when it was written: what admission reserves.
    cost_estimate: Decimal = Decimal(0)
    # The tzdata release that computed next_run_at ('': not recorded, stored before version_0019).
    tzdata_version: str = ""

    def __post_init__(self) -> None:
        _set(self, "schedule_kind", ScheduleKind(self.schedule_kind))
        _set(self, "backoff_strategy", BackoffStrategy(self.backoff_strategy))
        _set(self, "status", TaskStatus(self.status))
        _set(self, "misfire_policy", MisfirePolicy(self.misfire_policy))


@dataclass(frozen=True)
class Run:
    id: uuid.UUID
    due_work_id: int
    task_id: uuid.UUID
    attempt: int
    status: RunStatus
    scheduled_for: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    #: Read back from JSON with text statuses; each becomes its StepStatus member here, once
    #: per read (the worker never builds a Run: it resumes from `Claimed.saved_steps`).
    steps: list[StepRecord]
    error: str | None
    cost: Decimal | None = None  # what its steps were charged; None: nothing

    def __post_init__(self) -> None:
        _set(self, "status", RunStatus(self.status))
        for step in self.steps:
            text: str = step["status"]
            step["status"] = _STEP_STATUSES.get(text) or StepStatus(text)


@dataclass(frozen=True)
class RunLog:
    id: int
    run_id: uuid.UUID
    at: datetime
    level: LogLevel
    step_id: str | None
    message: str

    def __post_init__(self) -> None:
        _set(self, "level", LogLevel(self.level))


@dataclass(frozen=True)
class Event:
    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    published_by: uuid.UUID | None
    received_at: datetime
    # The run whose step published it (None: published through the API), and how many
    # events stand between it and one published through the API (which is hop 0).
    source_run_id: uuid.UUID | None = None
    hop: int = 0
    # Whose event tasks it reaches besides its publisher's: every agent's, or these.
    audience_all: bool = False
    audience: list[uuid.UUID] | None = None


@dataclass(frozen=True)
class Asset:
    id: uuid.UUID
    created_by: uuid.UUID
    label: str
    filename: str
    media_type: str
    size: int
    sha256: bytes
    tags: list[str]
    status: AssetStatus
    chunk_bytes: int
    run_id: uuid.UUID | None
    task_id: uuid.UUID | None
    created_at: datetime
    step_id: str | None = None  # the step of `run_id` that made it, if a step did

    def __post_init__(self) -> None:
        _set(self, "status", AssetStatus(self.status))

    @property
    def etag(self) -> str:
        """The strong validator of its bytes: the quoted SHA-256, in hex."""
        return f'"{self.sha256.hex()}"'
