"""Rendering stops as soon as its output passes the cap: it never builds what it refuses."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pao.templates import Budget, JSONValue, TemplateError, TooLarge, json_size, render

MIB = 1024 * 1024


class Counting(Mapping[str, JSONValue]):
    """A step's outputs that count how often a lookup reads them."""

    def __init__(self, outputs: dict[str, JSONValue]) -> None:
        self.outputs = outputs
        self.reads = 0

    def __getitem__(self, key: str) -> JSONValue:
        self.reads += 1
        return self.outputs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.outputs

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)


def _context(body: JSONValue) -> tuple[dict[str, Any], Counting]:
    steps = Counting({"a": {"body": body}})
    return {"steps": steps}, steps


def test_within_the_cap_rendering_is_unchanged_and_the_size_is_counted() -> None:
    context: dict[str, Any] = {"steps": {"a": {"n": 3, "s": "é", "o": {"k": [1, None]}}}}
    template: JSONValue = {
        "text": "n=${steps.a.n} ${steps.a.o.k}",
        "whole": "${steps.a.o}",
        "list": ["${steps.a.s}", 2.5, True, None],
    }
    budget = Budget(1024)
    rendered = render(template, context, budget=budget)
    assert rendered == render(template, context)
    assert rendered == {
        "text": "n=3 [1,null]",
        "whole": {"k": [1, None]},
        "list": ["é", 2.5, True, None],
    }
    exact = len(json.dumps(rendered, separators=(",", ":"), ensure_ascii=False).encode())
    assert budget.spent == exact


def test_the_render_stops_at_the_first_lookup_past_the_cap() -> None:
    """200 copies of a 10 MiB body would be 2 GiB: the first copy already passes 1 MiB."""
    context, steps = _context("x" * (10 * MIB))
    template: JSONValue = {"data": "${steps.a.body}" * 200}
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge) as caught:
            render(template, context, budget=Budget(MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert steps.reads == 1  # one lookup resolved, not 200
    assert peak < MIB  # nothing the size of the body (let alone 2 GiB) was built
    error = caught.value
    assert isinstance(error, TemplateError)
    assert error.limit == MIB
    assert error.size > MIB
    assert error.where == ("data",)
    assert error.lookup == "${steps.a.body}"


def test_many_small_lookups_stop_just_past_the_cap() -> None:
    context, steps = _context("y" * 1000)
    template: JSONValue = {"data": "${steps.a.body}" * 10_000}
    with pytest.raises(TooLarge) as caught:
        render(template, context, budget=Budget(64 * 1024))
    assert steps.reads == 66  # 65 fit in 64 KiB; the 66th passes it
    assert 64 * 1024 < caught.value.size <= 64 * 1024 + 1000


def test_values_spread_over_many_fields_count_together() -> None:
    context, _ = _context("z" * 600)
    template: JSONValue = {f"f{i}": ["${steps.a.body}"] for i in range(10)}
    with pytest.raises(TooLarge) as caught:
        render(template, context, budget=Budget(4096))
    assert caught.value.where == ("f6", 0)


def test_a_whole_object_is_measured_before_it_is_copied() -> None:
    big: JSONValue = {"items": [{"title": "t" * 100, "n": i} for i in range(20_000)]}
    context, _ = _context(big)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            render({"all": "${steps.a.body}"}, context, budget=Budget(MIB))
        with pytest.raises(TooLarge):
            render({"text": "all: ${steps.a.body}"}, context, budget=Budget(MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB // 4  # no deep copy, no json.dumps of the 2.5 MiB object


def test_the_literal_text_of_a_template_counts_too() -> None:
    with pytest.raises(TooLarge):
        render({"text": "a" * 5000}, {}, budget=Budget(4096))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -12.5,
        "plain",
        "ünïcødé ✓",
        [],
        {},
        {"a": [1, 2, {"b": None, "c": "d"}], "e": False, "ключ": 1e100},
    ],
)
def test_json_size_is_the_size_of_compact_json(value: JSONValue) -> None:
    exact = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    assert json_size(value) == exact


def test_json_size_stops_counting_past_its_limit() -> None:
    value: JSONValue = ["x" * 1000] * 10_000
    assert 20_000 < json_size(value, limit=20_000) <= 21_100  # commas, then ~10 items
