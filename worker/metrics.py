"""What the worker counts. Cheap on the hot path: no database call, no lock of ours.

Metrics exist only once `enable()` ran (the worker calls it when its metrics
port is on): with PAO_METRICS_PORT=0 nothing is counted and prometheus-client
is not even loaded, which keeps about 2 MB off every worker. `labels()` takes
prometheus-client's lock on every call, so the children used per run are
looked up once and kept in plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.runs = Counter(
            "pao_worker_runs",
            "Attempts this worker ended, by outcome: a final status, 'retrying' (failed, another "
            "attempt queued), 'handed_back' (shutdown, attempt unspent) or 'lost' (lease lost, "
            "nothing written)",
            ["outcome"],
        )
        self.claim_seconds = Histogram(
            "pao_worker_claim_duration_seconds",
            "One claim: lock due work, start its runs, read the tasks not known yet",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.claimed = Counter("pao_worker_claimed", "Attempts claimed by this worker")
        self.step_seconds = Histogram(
            "pao_worker_step_duration_seconds",
            "One pipeline step, by tool and how it ended",
            ["tool", "status"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.lateness_seconds = Histogram(
            "pao_worker_lateness_seconds",
            "A first attempt's start minus its scheduled_for (retries wait for their backoff "
            "by design)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
        )
        self.running = Gauge("pao_worker_running", "Attempts this worker holds right now")
        self.cost = Counter(
            "pao_worker_cost",
            "What this worker charged for steps (the declared cost_per_call of their tools) "
            "before starting them, in the operator's money unit",
        )
        self.budget_refusals = Counter(
            "pao_worker_budget_refusals",
            "Steps this worker did not start because a budget (the task's budget_per_run, its "
            "owner's budget_per_day or budget_per_month) had no room: their runs failed",
        )
        self.outcomes: dict[str, Counter] = {}
        self.steps: dict[tuple[str, str], Histogram] = {}


_on: _Metrics | None = None


def enable(running: Callable[[], float]) -> None:
    """Create the worker's metrics (once); `running` reports the attempts held right now."""
    global _on
    if _on is None:
        _on = _Metrics()
    _on.running.set_function(running)


def claimed(count: int, seconds: float) -> None:
    if _on is not None:
        _on.claim_seconds.observe(seconds)
        _on.claimed.inc(count)


def started_late(seconds: float) -> None:
    if _on is not None:
        _on.lateness_seconds.observe(seconds)


def run_ended(outcome: str) -> None:
    if _on is None:
        return
    counter = _on.outcomes.get(outcome)
    if counter is None:
        counter = _on.outcomes[outcome] = _on.runs.labels(outcome)
    counter.inc()


def cost(amount: Decimal) -> None:
    if _on is not None:
        _on.cost.inc(float(amount))


def budget_refused() -> None:
    if _on is not None:
        _on.budget_refusals.inc()


def step_ended(tool: str, status: str, seconds: float) -> None:
    if _on is None:
        return
    key = (tool, status)
    histogram = _on.steps.get(key)
    if histogram is None:
        if len(_on.steps) >= 1000:  # tools come from the tools file; this only guards the memory
            key = ("other", status)
            histogram = _on.steps.get(key) or _on.step_seconds.labels(*key)
        else:
            histogram = _on.step_seconds.labels(*key)
        _on.steps[key] = histogram
    histogram.observe(seconds)
