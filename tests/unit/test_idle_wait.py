"""After a claim that left slots free: how long the worker sleeps before the next."""

from __future__ import annotations

from worker.claims import MIN_IDLE_SECONDS, idle_wait


def test_it_sleeps_until_the_next_work_falls_due() -> None:
    assert idle_wait(0.15, claimed=False, retried=False) == (0.15, False)
    assert idle_wait(0.15, claimed=False, retried=True) == (0.15, False)
    assert idle_wait(0.0, claimed=True, retried=True) == (0.0, False)


def test_an_empty_claim_of_due_work_is_retried_at_once_then_backs_off() -> None:
    # Woken a moment early: due by the time it asks, so it claims again at once.
    wait, retried = idle_wait(0.0, claimed=False, retried=False)
    assert (wait, retried) == (0.0, True)
    # Still nothing: another claim holds the due rows; no busy loop while it does.
    assert idle_wait(0.0, claimed=False, retried=retried) == (MIN_IDLE_SECONDS, True)
    assert idle_wait(0.0, claimed=False, retried=True) == (MIN_IDLE_SECONDS, True)
