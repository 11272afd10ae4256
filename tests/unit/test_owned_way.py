"""How an owner's run list goes on after a short page among the newest runs."""

from __future__ import annotations

import re

from pao.sql import QUERIES
from pao.store.runs import OWNED_SCAN, owned_way
from pao.vocabulary import RunStatus


def test_a_window_short_of_full_held_every_run_left() -> None:
    assert owned_way(found=3, window=OWNED_SCAN - 1, tasks=5, limit=51, status=None) is None
    assert owned_way(found=0, window=0, tasks=5, limit=51, status=RunStatus.FAILED) is None


def test_few_tasks_are_read_one_by_one() -> None:
    """None of the owner's runs among the newest: a walk has no bound, tasks do."""
    assert owned_way(found=0, window=OWNED_SCAN, tasks=3, limit=51, status=None) == (
        "run_list_owned"
    )
    assert owned_way(found=0, window=OWNED_SCAN, tasks=10_000, limit=51, status=None) == (
        "run_list_owned"
    )
    # One run in a thousand is theirs: 51,000 runs to walk against 20 tasks' 1,020.
    assert owned_way(found=1, window=OWNED_SCAN, tasks=20, limit=51, status=None) == (
        "run_list_owned"
    )


def test_many_tasks_with_a_fair_share_of_runs_are_walked() -> None:
    """25 of the newest thousand are theirs: about 2,000 runs to walk, against 5,000 tasks'
    255,000 task by task."""
    assert owned_way(found=25, window=OWNED_SCAN, tasks=5_000, limit=51, status=None) == (
        "run_list"
    )


def test_a_status_filter_is_walked() -> None:
    assert owned_way(found=0, window=OWNED_SCAN, tasks=3, limit=51, status=RunStatus.FAILED) == (
        "run_list"
    )


def test_the_statements_read_the_window_this_module_counts_on() -> None:
    """The window is written out in SQL (a plan made once is priced right only then)."""
    for name in ("run_list_owned_recent", "run_list_owned_cost"):
        assert re.findall(r"LIMIT (\d+)\)?", QUERIES[name]).count(str(OWNED_SCAN)) == 1, name
