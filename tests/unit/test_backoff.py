from __future__ import annotations

import random
from datetime import timedelta

import pytest

from pao.backoff import retry_delay


def test_strategies() -> None:
    assert [retry_delay("fixed", n, base_seconds=2).total_seconds() for n in (1, 2, 3)] == [2, 2, 2]
    assert [retry_delay("linear", n, base_seconds=2).total_seconds() for n in (1, 2, 3)] == [
        2,
        4,
        6,
    ]
    assert [retry_delay("exponential", n, base_seconds=2).total_seconds() for n in (1, 2, 3)] == [
        2,
        4,
        8,
    ]


def test_cap_applies_and_huge_attempts_do_not_overflow() -> None:
    assert retry_delay("exponential", 10_000, base_seconds=5, cap_seconds=60) == timedelta(
        seconds=60
    )
    assert retry_delay("linear", 100, base_seconds=5, cap_seconds=60) == timedelta(seconds=60)


def test_jitter_stays_within_the_exponential_value_and_varies() -> None:
    rng = random.Random(7)
    draws = [retry_delay("exponential_jitter", 4, base_seconds=1, rng=rng) for _ in range(200)]
    assert all(timedelta(0) <= d <= timedelta(seconds=8) for d in draws)
    assert len(set(draws)) > 150


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown"):
        retry_delay("random", 1)
    with pytest.raises(ValueError, match="from 1"):
        retry_delay("fixed", 0)
