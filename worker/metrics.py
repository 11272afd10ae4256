"""What the worker counts. Cheap on the hot path: no database call, no lock of ours.

`labels()` takes prometheus-client's lock on every call, so the children
used per run are looked up once and kept in plain dicts.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS = Counter(
    "pao_worker_runs",
    "Attempts this worker ended, by outcome: a final status, 'retrying' (failed, another "
    "attempt queued), 'handed_back' (shutdown, attempt unspent) or 'lost' (lease lost, "
    "nothing written)",
    ["outcome"],
)
CLAIM_SECONDS = Histogram(
    "pao_worker_claim_duration_seconds",
    "One claim transaction: lock due work, start its runs, read their tasks",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CLAIMED = Counter("pao_worker_claimed", "Attempts claimed by this worker")
STEP_SECONDS = Histogram(
    "pao_worker_step_duration_seconds",
    "One pipeline step, by tool and how it ended",
    ["tool", "status"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
LATENESS_SECONDS = Histogram(
    "pao_worker_lateness_seconds",
    "A first attempt's start minus its scheduled_for (retries wait for their backoff by design)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
RUNNING = Gauge("pao_worker_running", "Attempts this worker holds right now")

_outcomes: dict[str, Counter] = {}
_steps: dict[tuple[str, str], Histogram] = {}


def run_ended(outcome: str) -> None:
    counter = _outcomes.get(outcome)
    if counter is None:
        counter = _outcomes[outcome] = RUNS.labels(outcome)
    counter.inc()


def step_ended(tool: str, status: str, seconds: float) -> None:
    key = (tool, status)
    histogram = _steps.get(key)
    if histogram is None:
        if len(_steps) >= 1000:  # tools come from the tools file; this only guards the memory
            key = ("other", status)
            histogram = _steps.get(key) or STEP_SECONDS.labels(*key)
        else:
            histogram = STEP_SECONDS.labels(*key)
        _steps[key] = histogram
    histogram.observe(seconds)
