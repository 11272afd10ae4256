"""Rows as the database returns them; typed, immutable."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SCOPES = (
    "tasks:read",
    "tasks:write",
    "runs:read",
    "events:publish",
    "events:broadcast",  # publish to other agents' tasks (an event's `audience`)
    "admin",
)


@dataclass(frozen=True)
class Agent:
    id: uuid.UUID
    name: str
    token_prefix: str
    scopes: list[str]
    expires_at: datetime | None
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def has_scope(self, scope: str) -> bool:
        """An admin holds every scope."""
        return scope in self.scopes or self.is_admin


@dataclass(frozen=True)
class Task:
    id: uuid.UUID
    created_by: uuid.UUID
    title: str
    description: str
    schedule_kind: str
    schedule_expr: str
    timezone: str
    payload: dict[str, Any]
    priority: int
    dedupe_key: str | None
    dedupe_window_seconds: int
    max_retries: int
    backoff_strategy: str
    concurrency_key: str | None
    status: str
    next_run_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    misfire_policy: str
    misfire_grace_seconds: int
    paused_at: datetime | None
    condition_state: bool | None
    concurrency_limit: int | None = None
    claim_key: str | None = None
    claim_limit: int | None = None
    hourly_peak: int = 0


@dataclass(frozen=True)
class Run:
    id: uuid.UUID
    due_work_id: int
    task_id: uuid.UUID
    attempt: int
    status: str
    scheduled_for: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    steps: list[Any]
    error: str | None


@dataclass(frozen=True)
class RunLog:
    id: int
    run_id: uuid.UUID
    at: datetime
    level: str
    step_id: str | None
    message: str


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
