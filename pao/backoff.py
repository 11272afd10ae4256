"""How long to wait before retrying an occurrence, by the task's backoff strategy."""

from __future__ import annotations

import random
from datetime import timedelta

from pao.vocabulary import BackoffStrategy


def retry_delay(
    strategy: BackoffStrategy,
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
    if strategy == BackoffStrategy.FIXED:
        seconds = base_seconds
    elif strategy == BackoffStrategy.LINEAR:
        seconds = base_seconds * failed_attempts
    elif strategy in (BackoffStrategy.EXPONENTIAL, BackoffStrategy.EXPONENTIAL_JITTER):
        seconds = base_seconds * 2.0 ** min(failed_attempts - 1, 62)
    else:
        raise ValueError(f"unknown backoff strategy {strategy!r}")
    seconds = min(seconds, cap_seconds)
    if strategy == BackoffStrategy.EXPONENTIAL_JITTER:
        seconds = (rng or random).uniform(0.0, seconds)
    return timedelta(seconds=seconds)
