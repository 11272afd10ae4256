"""Every closed set of words pao stores or sends: states, kinds, decisions, scopes.

Written once here; the migrations' CHECK constraints hold the same lists, and
tests/integration/test_vocabulary.py fails when the two drift apart. Each is a
`StrEnum`, so a member is the very string the database and the JSON carry
(`RunStatus.QUEUED == "queued"`), and `RunStatus(text)` refuses a word that is
not in the set.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """`tasks.status`: whether a task still fires."""

    ACTIVE = "active"  #: Fires on its schedule or its events.
    PAUSED = "paused"  #: Kept, fires nothing until resumed; its scheduled work is cancelled.
    CANCELLED = "cancelled"  #: Stopped for good by its owner or an admin.
    COMPLETED = "completed"  #: Its schedule will never fire again and nothing of it is left.


class RunStatus(StrEnum):
    """`runs.status`: where one attempt at an occurrence is."""

    QUEUED = "queued"  #: Waiting for a worker to claim it.
    RUNNING = "running"  #: Claimed: a worker holds its lease and runs its steps.
    SUCCEEDED = "succeeded"  #: Every step ran (or was skipped) without failing.
    FAILED = "failed"  #: A step failed, or the lease was lost; a retry may follow as a new run.
    CANCELLED = "cancelled"  #: Cancelled before or while it ran.
    TIMED_OUT = "timed_out"  #: Stopped at its deadline.


class WorkState(StrEnum):
    """`due_work.state`: where an occurrence is in the queue; moves with its latest run."""

    QUEUED = "queued"  #: Waiting until `run_after` and a free worker.
    RUNNING = "running"  #: Leased by a worker (`lease_owner`, `lease_expires_at`).
    #: Its run waits for a remote step (no lease, no worker slot) until `wait_until`.
    WAITING = "waiting"
    SUCCEEDED = "succeeded"  #: Its last attempt succeeded.
    FAILED = "failed"  #: Its last attempt failed with no retry left.
    CANCELLED = "cancelled"  #: Cancelled; no attempt will follow.
    TIMED_OUT = "timed_out"  #: Its last attempt ran out of time.


class StepStatus(StrEnum):
    """`runs.steps[i].status`: where one step of a run's pipeline is."""

    RUNNING = "running"  #: Started; its tool has not answered yet.
    SUCCEEDED = "succeeded"  #: Its tool answered; the record holds the output.
    FAILED = "failed"  #: Its tool failed or timed out, or its input or output broke a limit.
    SKIPPED = "skipped"  #: Its `if` was false; it never started.
    #: Offered to the agents of its task type; the run waits, holding no worker, until it ends.
    WAITING = "waiting"
    CANCELLED = "cancelled"  #: Stopped with its run (sent to live streams only, never stored).


class Decision(StrEnum):
    """`occurrences.decision`: what became of one nominal fire time, and why."""

    QUEUED = "queued"  #: Work was queued for it.
    COALESCED = "coalesced"  #: Missed during downtime and folded into one later run.
    SKIPPED_PAUSED = "skipped_paused"  #: The task was paused when it came due.
    SNOOZED = "snoozed"  #: The task was snoozed past it.
    MISSED = "missed"  #: Past the misfire grace, dropped by the task's misfire policy.
    DEDUPLICATED = "deduplicated"  #: Its dedupe key was seen within the task's window.
    CANCELLED = "cancelled"  #: Its queued work was cancelled before it ran.
    HOP_LIMIT = "hop_limit"  #: An event too many hops down a chain of events fired nothing.
    OVER_QUOTA = "over_quota"  #: An event would have taken the owner past its hourly quota.
    #: The owner's budget_per_day or budget_per_month had no room for its estimated cost.
    OVER_BUDGET = "over_budget"
    RATE_LIMITED = "rate_limited"  #: The owner had started max_runs_per_hour runs this hour.
    #: A stored fire time that a tzdata upgrade's new zone rules dropped; the task fires at
    #: the time the new rules give instead (the detail says which, and which releases).
    RECOMPUTED = "recomputed"


class QueueReason(StrEnum):
    """`due_work.reason`: what queued an occurrence."""

    SCHEDULE = "schedule"  #: The task's schedule came due (the scheduler's materialise job).
    RUN_NOW = "run_now"  #: Someone asked for a run now.
    EVENT = "event"  #: A published event matched an event task.
    CONDITION = "condition"  #: A condition task's check came due.


class ScheduleKind(StrEnum):
    """`tasks.schedule_kind`: how `schedule_expr` is read."""

    CRON = "cron"  #: A five-field cron expression, in the task's zone.
    RRULE = "rrule"  #: An RFC 5545 recurrence rule, in the task's zone.
    ONCE = "once"  #: One ISO 8601 time; the task completes after it runs.
    EVENT = "event"  #: An event type pattern; fires when a matching event is published.
    CONDITION = "condition"  #: A check schedule; the rest runs when the condition turns true.


class BackoffStrategy(StrEnum):
    """`tasks.backoff_strategy`: how long a failed attempt waits before the next."""

    FIXED = "fixed"  #: The same wait every time.
    LINEAR = "linear"  #: The wait grows by the base with each failure.
    EXPONENTIAL = "exponential"  #: The wait doubles with each failure.
    EXPONENTIAL_JITTER = "exponential_jitter"  #: A random wait up to the exponential one.


class MisfirePolicy(StrEnum):
    """`tasks.misfire_policy`: what to do with fire times missed during downtime."""

    COALESCE = "coalesce"  #: The missed ones become one run.
    SKIP = "skip"  #: The missed ones are dropped; the schedule goes on from now.
    ALL = "all"  #: Every missed one runs.


class Scope(StrEnum):
    """`agents.scopes`: what an agent's token may do; `admin` holds every scope."""

    TASKS_READ = "tasks:read"  #: Read its own tasks.
    TASKS_WRITE = "tasks:write"  #: Create, change and cancel its own tasks.
    RUNS_READ = "runs:read"  #: Read its tasks' runs, steps and logs.
    EVENTS_PUBLISH = "events:publish"  #: Publish events to its own event tasks.
    EVENTS_BROADCAST = "events:broadcast"  #: Publish to other agents' tasks (an `audience`).
    WORK_CLAIM = "work:claim"  #: Claim and end work of the task types it serves.
    ASSETS_READ = "assets:read"  #: Read its own assets, download them, hand out signed links.
    ASSETS_WRITE = "assets:write"  #: Upload and delete its own assets.
    ADMIN = "admin"  #: Everything, over every agent.


class RemoteStepState(StrEnum):
    """`remote_steps.state`: a step offered to the agents that claim its task type."""

    QUEUED = "queued"  #: Offered; the next claim of its type takes it.
    CLAIMED = "claimed"  #: An agent holds it under a lease (taken again once the lease ends).
    SUCCEEDED = "succeeded"  #: Its holder completed it with an output.
    FAILED = "failed"  #: Its holder reported a failure.
    CANCELLED = "cancelled"  #: Its run ended or was cancelled before the step was done.


LIVE_REMOTE_STEP_STATES: frozenset[RemoteStepState] = frozenset(
    {RemoteStepState.QUEUED, RemoteStepState.CLAIMED}
)


class AssetStatus(StrEnum):
    """`assets.status`: whether an asset's bytes can be read."""

    #: Every byte stored. An upload is one transaction, so no other state is ever seen.
    READY = "ready"


class BudgetPeriod(StrEnum):
    """`agent_spending.period`: the window of an agent's zone a figure is counted in."""

    HOUR = "hour"  #: From the top of the hour: runs admitted, for max_runs_per_hour.
    DAY = "day"  #: From local midnight: cost, for budget_per_day.
    MONTH = "month"  #: From local midnight on the 1st: cost, for budget_per_month.


class LogLevel(StrEnum):
    """`run_logs.level`: how much a run's log line matters."""

    DEBUG = "debug"  #: Detail for whoever debugs the pipeline.
    INFO = "info"  #: What happened.
    WARNING = "warning"  #: Something looks wrong but the step went on.
    ERROR = "error"  #: Something failed.


class ProcessKind(StrEnum):
    """`process_heartbeats.kind`: which long-running process beats."""

    API = "api"  #: The HTTP API.
    SCHEDULER = "scheduler"  #: Materialises, rescues and prunes.
    WORKER = "worker"  #: Claims due work and runs pipelines.


class IdempotencyState(StrEnum):
    """`idempotency_keys.state`: whether the first request with a key has answered."""

    IN_FLIGHT = "in_flight"  #: The first request is still being handled.
    DONE = "done"  #: Answered; its response is kept to be replayed.


#: Statuses a run ends in; none of them changes again.
FINAL_RUN_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT}
)
#: Statuses of a run not yet ended.
LIVE_RUN_STATUSES: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
#: States of an occurrence not yet ended.
LIVE_WORK_STATES: frozenset[WorkState] = frozenset(
    {WorkState.QUEUED, WorkState.RUNNING, WorkState.WAITING}
)
#: Statuses of a task that may still fire.
LIVE_TASK_STATUSES: frozenset[TaskStatus] = frozenset({TaskStatus.ACTIVE, TaskStatus.PAUSED})
#: Kinds with a next fire time (`next_run_at`); event tasks fire only on events.
SCHEDULED_KINDS: frozenset[ScheduleKind] = frozenset(
    {ScheduleKind.CRON, ScheduleKind.RRULE, ScheduleKind.ONCE, ScheduleKind.CONDITION}
)
