"""How long to wait before retrying an occurrence, by the task's backoff strategy."""

from __future__ import annotations

import random
from datetime import timedelta

STRATEGIES = ("fixed", "linear", "exponential", "exponential_jitter")


def retry_delay(
    strategy: str,
    failed_attempts: int,
    *,
    base_seconds: float = 5.0,
    cap_seconds: float = 3600.0,
    rng: random.Random | None = None,
) -> timedelta:
    """The wait after `failed_attempts` failures (1 after the first), capped at `cap_seconds`.

    `exponential_jitter` draws uniformly between zero and the exponential value
    ("full jitter"), so retries of many failed runs spread out instead of
    arriving together.
    """
    if failed_attempts < 1:
        raise ValueError("failed_attempts counts from 1")
    if strategy == "fixed":
        seconds = base_seconds
    elif strategy == "linear":
        seconds = base_seconds * failed_attempts
    elif strategy in ("exponential", "exponential_jitter"):
        seconds = base_seconds * 2.0 ** min(failed_attempts - 1, 62)
    else:
        raise ValueError(f"unknown backoff strategy {strategy!r}")
    seconds = min(seconds, cap_seconds)
    if strategy == "exponential_jitter":
        seconds = (rng or random).uniform(0.0, seconds)
    return timedelta(seconds=seconds)
