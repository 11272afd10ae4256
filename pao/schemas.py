"""Request bodies shared by every face of the orchestrator (HTTP API, CLI, MCP).

Shapes and ranges only; meaning (schedules, pipelines, ownership) is checked
by the logic in `pao.tasks`, which collects every error before answering.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from pao.errors import FieldError, InvalidInput

ScheduleKindField = Literal["cron", "rrule", "once", "event", "condition"]
BackoffField = Literal["fixed", "linear", "exponential", "exponential_jitter"]
MisfireField = Literal["coalesce", "skip", "all"]
TaskStatusField = Literal["active", "paused", "cancelled", "completed"]
RunStatusField = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
ScopeField = Literal[
    "tasks:read", "tasks:write", "runs:read", "events:publish", "events:broadcast", "admin"
]
# Every agent's event tasks ("*"), or these agents' too; the publisher's own are always reached.
Audience = Literal["*"] | Annotated[list[uuid.UUID], Field(max_length=1000)]


def _written_as_text(value: Any) -> Any:
    """JSON has no time type, so a time comes as a string. A number would otherwise be read
    as Unix seconds and a boolean as 0 or 1, neither of which the schema promises."""
    if not isinstance(value, str | datetime):
        raise ValueError(
            "must be an ISO 8601 date-time string with an offset, e.g. 2030-01-01T09:00:00Z"
        )
    return value


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


class TaskCreate(_Strict):
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    schedule_kind: ScheduleKindField
    schedule_expr: str = Field(min_length=1, max_length=1000)
    timezone: str | None = Field(
        None, min_length=1, max_length=64, description="IANA zone; default from server"
    )
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: StrictInt = Field(5, ge=1, le=9, description="1 runs first")
    dedupe_key: str | None = Field(None, min_length=1, max_length=500)
    dedupe_window_seconds: StrictInt = Field(0, ge=0, le=31 * 86_400)
    max_retries: StrictInt = Field(3, ge=0, le=100)
    backoff_strategy: BackoffField = "exponential_jitter"
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
    misfire_policy: MisfireField = Field(
        "coalesce",
        description="after downtime: coalesce (missed ones become one run), skip, or all",
    )
    misfire_grace_seconds: StrictInt = Field(300, ge=0, le=31 * 86_400)


class TaskUpdate(_Patch):
    """Any subset of a task's fields; what is left out stays as it is."""

    title: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    schedule_kind: ScheduleKindField | None = None
    schedule_expr: str | None = Field(None, min_length=1, max_length=1000)
    timezone: str | None = Field(None, min_length=1, max_length=64)
    payload: dict[str, Any] | None = None
    priority: StrictInt | None = Field(None, ge=1, le=9)
    dedupe_key: str | None = Field(None, min_length=1, max_length=500)
    dedupe_window_seconds: StrictInt | None = Field(None, ge=0, le=31 * 86_400)
    max_retries: StrictInt | None = Field(None, ge=0, le=100)
    backoff_strategy: BackoffField | None = None
    concurrency_key: str | None = Field(None, min_length=1, max_length=200)
    concurrency_limit: StrictInt | None = Field(None, ge=1, le=1000)
    created_by: uuid.UUID | None = None
    misfire_policy: MisfireField | None = None
    misfire_grace_seconds: StrictInt | None = Field(None, ge=0, le=31 * 86_400)

    # Fields that may be set to null explicitly; for the rest null is an error.
    NULLABLE: ClassVar[frozenset[str]] = frozenset(
        {"dedupe_key", "concurrency_key", "concurrency_limit"}
    )


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
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"expires_at"})

    name: str | None = Field(None, min_length=1, max_length=200)
    scopes: list[ScopeField] | None = Field(None, min_length=1)
    disabled: StrictBool | None = None
    expires_at: BodyTime | None = None
