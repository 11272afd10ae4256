"""Request bodies shared by every face of the orchestrator (HTTP API, CLI, MCP).

Shapes and ranges only; meaning (schedules, pipelines, ownership) is checked
by the logic in `pao.domain.tasks`, which collects every error before answering.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    create_model,
)

from pao import costs
from pao.errors import FieldError, InvalidInput
from pao.vocabulary import (
    BackoffStrategy,
    MisfirePolicy,
    RunStatus,
    ScheduleKind,
    Scope,
    TaskStatus,
)

# The names the API's routes use for the words they take; each is its pao.vocabulary enum.
ScheduleKindField = ScheduleKind
BackoffField = BackoffStrategy
MisfireField = MisfirePolicy
TaskStatusField = TaskStatus
RunStatusField = RunStatus
ScopeField = Scope
# Every agent's event tasks ("*"), or these agents' too; the publisher's own are always reached.
Audience = Literal["*"] | Annotated[list[uuid.UUID], Field(max_length=1000)]


def _written_as_text(value: Any) -> Any:
    """JSON has no time type, so a time comes as a string. A number would otherwise be read
    as Unix seconds and a boolean as 0 or 1, neither of which the schema promises."""
    if isinstance(value, datetime):
        return value
    # A string of digits ("0", "1700000000") would still be read as Unix seconds.
    if not isinstance(value, str) or not _ISO_DATE_TIME.match(value):
        raise ValueError(
            "must be an ISO 8601 date-time string with an offset, e.g. 2030-01-01T09:00:00Z"
        )
    return value


_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


# A time given in a body: an ISO 8601 string with an offset, nothing else.
BodyTime = Annotated[AwareDatetime, BeforeValidator(_written_as_text)]


class _Strict(BaseModel):
    """Unknown fields are errors; numbers and booleans are not read from strings.

    Not `strict=True` for the whole model: FastAPI validates parsed JSON in Python
    mode, where strict mode would refuse UUIDs and times written as strings.
    """

    model_config = ConfigDict(extra="forbid")


class _Patch(_Strict):
    """A partial update: fields left out stay as they are; null only where `NULLABLE` says."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    def changes(self) -> dict[str, Any]:
        """The fields the client sent; InvalidInput if one that may not be null is null."""
        given = {name: getattr(self, name) for name in sorted(self.model_fields_set)}
        nulls = [name for name, value in given.items() if value is None]
        bad = [name for name in nulls if name not in self.NULLABLE]
        if bad:
            raise InvalidInput(
                [FieldError((name,), "may not be null; leave it out to keep it") for name in bad]
            )
        return given


MAX_COST = costs.MAX_COST
"""The largest cost a task type, a completed step or a budget may state."""


def _json_number(value: Any) -> Any:
    """A number as JSON writes it: not a string, not a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


# A cost: a finite JSON number from 0 to MAX_COST with at most MAX_PLACES decimal places,
# kept exact (numeric in the database); answered as a string, as every amount of money is.
Cost = Annotated[
    Decimal,
    BeforeValidator(_json_number),
    Field(
        ge=0,
        le=MAX_COST,
        allow_inf_nan=False,
        max_digits=costs.MAX_DIGITS,
        decimal_places=costs.MAX_PLACES,
    ),
    # No `multipleOf` 0.000001: validators that divide floats refuse 0.1 with it (0.1 / 1e-6
    # is 100000.00000000001), so a client checking the schema would refuse good amounts.
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_COST,
            "description": f"at most {costs.MAX_PLACES} decimal places",
        },
        mode="validation",
    ),
]


class TaskFields(_Strict):
    """A task's writable fields, written once: their types, defaults and limits.

    TaskCreate is these as they are; TaskUpdate is these all optional; the API's
    TaskPublic is these with the fields only the server writes.
    """

    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    schedule_kind: ScheduleKind
    schedule_expr: str = Field(min_length=1, max_length=1000)
    timezone: str | None = Field(
        None, min_length=1, max_length=64, description="IANA zone; default from server"
    )
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: StrictInt = Field(5, ge=1, le=9, description="1 runs first")
    dedupe_key: str | None = Field(None, min_length=1, max_length=500)
    dedupe_window_seconds: StrictInt = Field(0, ge=0, le=31 * 86_400)
    max_retries: StrictInt = Field(3, ge=0, le=100)
    backoff_strategy: BackoffStrategy = BackoffStrategy.EXPONENTIAL_JITTER
    concurrency_key: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="at most concurrency_limit (default 1) running runs among this agent's "
        "tasks with the same key",
    )
    concurrency_limit: StrictInt | None = Field(
        None,
        ge=1,
        le=1000,
        description="running runs allowed for the key; without a key, for this task alone",
    )
    created_by: uuid.UUID | None = Field(
        None, description="the owner; only admins may name another agent"
    )
    misfire_policy: MisfirePolicy = Field(
        MisfirePolicy.COALESCE,
        description="after downtime: coalesce (missed ones become one run), skip, or all",
    )
    misfire_grace_seconds: StrictInt = Field(300, ge=0, le=31 * 86_400)
    budget_per_run: Cost | None = Field(
        None,
        description="the most one run may be charged (its steps' cost_per_call, a remote "
        "step's reported cost); a step that would pass it fails the run with "
        "budget_exceeded before it starts. Null: no ceiling",
    )


class TaskCreate(TaskFields):
    """A new task: its writable fields, with their defaults."""


class _TaskPatch(_Patch):
    """Any subset of a task's fields; what is left out stays as it is."""

    # Fields that may be set to null explicitly; for the rest null is an error.
    NULLABLE: ClassVar[frozenset[str]] = frozenset(
        {"dedupe_key", "concurrency_key", "concurrency_limit", "budget_per_run"}
    )


def _all_optional(name: str, fields: type[BaseModel], base: type[_Patch]) -> type[_Patch]:
    """Model `name` on `base` with every field of `fields` optional (default None), keeping
    its type, limits and description: a partial update written from the same declarations."""
    optional: dict[str, Any] = {}
    for field, info in fields.model_fields.items():
        kept: Any = info.annotation
        if info.metadata:
            kept = Annotated[kept, *info.metadata]
        optional[field] = (kept | None, Field(None, description=info.description))
    return create_model(name, __base__=base, __doc__=base.__doc__, **optional)


if TYPE_CHECKING:

    class TaskUpdate(_TaskPatch):
        """Built at run time from TaskFields, which mypy cannot follow: read `changes()`,
        or a field (each TaskFields' type or None) as Any."""

        def __getattr__(self, name: str) -> Any: ...

else:
    TaskUpdate = _all_optional("TaskUpdate", TaskFields, _TaskPatch)


class TaskFilter(BaseModel):
    """Which tasks a listing keeps (the query parameters of `GET /tasks`); unset keeps all."""

    model_config = ConfigDict(frozen=True)

    status: TaskStatusField | None = None
    created_by: uuid.UUID | None = None
    schedule_kind: ScheduleKindField | None = None


class SchedulePreview(_Strict):
    schedule_kind: ScheduleKindField
    schedule_expr: str = Field(min_length=1, max_length=1000)
    timezone: str | None = Field(None, min_length=1, max_length=64)
    count: StrictInt = Field(5, ge=1, le=100)


class Snooze(_Strict):
    seconds: StrictInt = Field(ge=1, le=366 * 86_400)


class EventPublish(_Strict):
    type: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/-]+$")
    payload: dict[str, Any] = Field(default_factory=dict)
    audience: Audience | None = Field(
        None,
        description=(
            'Whose event tasks the event reaches besides the publisher\'s own: "*" for every '
            "agent's, or a list of agent ids. Needs the events:broadcast scope."
        ),
    )


class AgentCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[ScopeField] = Field(min_length=1)
    expires_at: BodyTime | None = Field(None, description="ISO 8601 with offset; null: never")


class AgentUpdate(_Patch):
    NULLABLE: ClassVar[frozenset[str]] = frozenset(
        {
            "expires_at",
            "task_types",
            "budget_per_day",
            "budget_per_month",
            "max_runs_per_hour",
            "timezone",
        }
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    scopes: list[ScopeField] | None = Field(None, min_length=1)
    disabled: StrictBool | None = None
    expires_at: BodyTime | None = None
    task_types: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None,
        max_length=1000,
        description="the task types its token may claim (work:claim); null: any",
    )
    budget_per_day: Cost | None = Field(
        None, description="what its runs may be charged per day of its zone; null: no budget"
    )
    budget_per_month: Cost | None = Field(
        None, description="what its runs may be charged per month of its zone; null: no budget"
    )
    max_runs_per_hour: StrictInt | None = Field(
        None, ge=0, le=1_000_000, description="runs of its tasks started per hour; null: any"
    )
    timezone: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="IANA zone its days and months are counted in; null: the server's default",
    )


# Task types and the claim protocol ------------------------------------------------------

# Seconds or a percentage given as a JSON number, never NaN or infinite.
JsonFloat = Annotated[float, BeforeValidator(_json_number), Field(allow_inf_nan=False)]


class TaskTypeDefinition(_Strict):
    """What a task type says (PUT replaces all of it); `pao.domain.task_types` checks it."""

    description: str = Field("", max_length=10_000)
    parameters_schema: dict[str, Any] = Field(
        description="JSON Schema (Draft 2020-12) of a step's 'with'; 'type' must be 'object'"
    )
    output_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema the output of a completed step must match; null: any"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    lease_seconds: StrictInt = Field(
        60, ge=1, le=3600, description="how long a claim holds a step without a heartbeat"
    )
    cost_per_call: Cost | None = None
    is_active: StrictBool = True


class TaskTypeCreate(TaskTypeDefinition):
    name: str = Field(
        min_length=1,
        max_length=128,
        description="lowercase letters, digits, '_', '-' and '.', e.g. media.transcode; "
        "what a step writes in 'uses'",
    )


class ClaimRequest(_Strict):
    limit: StrictInt = Field(1, ge=1, le=100, description="at most this many steps")
    wait_seconds: JsonFloat = Field(
        0, ge=0, le=30, description="wait this long for work when there is none now"
    )


class ClaimProgress(_Strict):
    message: str = Field(min_length=1, max_length=2000)
    percent: JsonFloat | None = Field(None, ge=0, le=100)


class ClaimComplete(_Strict):
    output: dict[str, Any]
    cost: Cost | None = Field(None, description="what doing the step cost; 0 to 1e9")


MAX_BATCH_COMPLETIONS = 100


class ClaimCompletion(_Strict):
    claim_id: str = Field(min_length=1, max_length=200)
    output: dict[str, Any]
    cost: Cost | None = Field(None, description="what doing the step cost; 0 to 1e9")


def _distinct_claims(items: list[ClaimCompletion]) -> list[ClaimCompletion]:
    seen: set[str] = set()
    for item in items:
        if item.claim_id in seen:
            raise ValueError(f"claim {item.claim_id[:40]!r} is completed twice; send it once")
        seen.add(item.claim_id)
    return items


class ClaimCompleteMany(_Strict):
    items: Annotated[
        list[ClaimCompletion],
        Field(min_length=1, max_length=MAX_BATCH_COMPLETIONS),
        AfterValidator(_distinct_claims),
    ]


class ClaimFail(_Strict):
    error: str = Field(min_length=1, max_length=10_000)
    retryable: StrictBool = Field(
        False, description="whether trying the step again could succeed (the task's retries)"
    )


class AssetLinkCreate(_Strict):
    """POST /assets/{id}/links: how long the signed link works."""

    expires_in: int = Field(
        default=900,
        ge=1,
        le=3600,
        strict=True,
        description="Seconds until the link stops working (1 to 3600; default 900).",
    )
