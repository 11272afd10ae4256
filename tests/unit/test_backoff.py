from __future__ import annotations

import random
from datetime import timedelta

import pytest

from pao.backoff import retry_delay
from pao.vocabulary import BackoffStrategy


def test_strategies() -> None:
    assert [
        retry_delay(BackoffStrategy.FIXED, n, base_seconds=2).total_seconds() for n in (1, 2, 3)
    ] == [2, 2, 2]
    assert [
        retry_delay(BackoffStrategy.LINEAR, n, base_seconds=2).total_seconds() for n in (1, 2, 3)
    ] == [
        2,
        4,
        6,
    ]
    assert [
        retry_delay(BackoffStrategy.EXPONENTIAL, n, base_seconds=2).total_seconds()
        for n in (1, 2, 3)
    ] == [
        2,
        4,
        8,
    ]


def test_cap_applies_and_huge_attempts_do_not_overflow() -> None:
    assert retry_delay(
        BackoffStrategy.EXPONENTIAL, 10_000, base_seconds=5, cap_seconds=60
    ) == timedelta(seconds=60)
    assert retry_delay(BackoffStrategy.LINEAR, 100, base_seconds=5, cap_seconds=60) == timedelta(
        seconds=60
    )


def test_jitter_stays_within_the_exponential_value_and_varies() -> None:
    rng = random.Random(7)
    draws = [
        retry_delay(BackoffStrategy.EXPONENTIAL_JITTER, 4, base_seconds=1, rng=rng)
        for _ in range(200)
    ]
    assert all(timedelta(0) <= d <= timedelta(seconds=8) for d in draws)
    assert len(set(draws)) > 150


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not a valid BackoffStrategy"):
        BackoffStrategy("random")
    with pytest.raises(ValueError, match="from 1"):
        retry_delay(BackoffStrategy.FIXED, 0)
