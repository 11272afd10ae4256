"""What the scheduler counts and measures."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TICK_SECONDS = Histogram(
    "pao_scheduler_tick_duration_seconds",
    "One run of a periodic scheduler job, by job",
    ["job"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MATERIALISED = Counter("pao_scheduler_materialised", "Occurrences this scheduler queued")
REFUSED = Counter(
    "pao_scheduler_refused",
    "Scheduled occurrences this scheduler did not queue because of their owner's limits, by "
    "decision: over_budget (a day or month budget had no room) or rate_limited "
    "(max_runs_per_hour)",
    ["decision"],
)
RESCUES = Counter(
    "pao_scheduler_lease_rescues",
    "Expired leases this scheduler handled, by outcome: requeued, failed (no retries left) "
    "or cancelled",
    ["outcome"],
)
DUE_WORK = Gauge(
    "pao_due_work",
    "Occurrences waiting or running, counted exactly on partial indexes every few seconds",
    ["state"],
)
DUE_WORK_READY = Gauge(
    "pao_due_work_ready", "Queued occurrences already due (run_after has passed), counted exactly"
)
DUE_WORK_ESTIMATED = Gauge(
    "pao_due_work_estimated",
    "Finished occurrences by state, estimated from the planner's statistics (pg_stats and "
    "pg_class, refreshed by autovacuum's ANALYZE): free to read on tables of any size",
    ["state"],
)
