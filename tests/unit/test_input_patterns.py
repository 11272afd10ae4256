"""Patterns applied to agents' input cannot backtrack: each character matches one way.

jsonschema runs a schema's `pattern` with Python's backtracking `re`. A repeat followed
by something that can start with the same character (`[^/]+[^\\s]*`) lets the engine try
every split of a run of such characters: quadratic in the input. The checker below
proves the absence of that shape from the parsed pattern, so the test counts no time:
at every point after a repeat's iteration, the next character either continues the
repeat or starts what follows, never both.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from functools import cache
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any

import pytest

from pao.errors import InvalidInput
from pao.pipeline import NAME_PATTERN, validate_payload
from pao.tools import BUILTIN_TOOLS, EVENT_TYPE_PATTERN, SERVER_NAME_PATTERN, ToolRegistry

OLD_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+[^\s]*$"
# Every character class here is decided on ASCII, Latin-1 and the Unicode spaces.
ALPHABET = frozenset(
    [chr(c) for c in range(0x250)] + [chr(c) for c in (0x1680, 0x2028, 0x2029, 0x3000)]
)


@cache
def _category(name: object) -> frozenset[str]:
    regex = {
        sre.CATEGORY_SPACE: r"\s",
        sre.CATEGORY_NOT_SPACE: r"\S",
        sre.CATEGORY_DIGIT: r"\d",
        sre.CATEGORY_NOT_DIGIT: r"\D",
        sre.CATEGORY_WORD: r"\w",
        sre.CATEGORY_NOT_WORD: r"\W",
    }[name]
    return frozenset(c for c in ALPHABET if re.fullmatch(regex, c))


def _char_set(op: object, av: Any, ignore_case: bool) -> frozenset[str]:
    if op is sre.LITERAL:
        found = {chr(av)}
    elif op is sre.NOT_LITERAL:
        found = set(ALPHABET) - {chr(av)}
    elif op is sre.ANY:
        found = set(ALPHABET) - {"\n"}
    elif op is sre.IN:
        found, negate = set(), False
        for sub_op, sub_av in av:
            if sub_op is sre.NEGATE:
                negate = True
            elif sub_op is sre.LITERAL:
                found.add(chr(sub_av))
            elif sub_op is sre.RANGE:
                found.update(chr(c) for c in range(sub_av[0], sub_av[1] + 1))
            elif sub_op is sre.CATEGORY:
                found.update(_category(sub_av))
            else:
                raise AssertionError(f"unhandled class item {sub_op}")
        if negate:
            found = set(ALPHABET) - found
    else:
        raise AssertionError(f"not a character: {op}")
    if ignore_case:
        found |= {c.swapcase() for c in found}
    return frozenset(found)


class Ambiguity(AssertionError):
    """A repeat can be left or continued on the same character."""


class _Checker:
    def __init__(self, ignore_case: bool) -> None:
        self.ignore_case = ignore_case

    def first(self, items: Iterable[tuple[object, Any]]) -> tuple[frozenset[str], bool]:
        """The characters a sequence can start with, and whether it can match nothing."""
        out: set[str] = set()
        for op, av in items:
            chars, nullable = self.first_one(op, av)
            out |= chars
            if not nullable:
                return frozenset(out), False
        return frozenset(out), True

    def first_one(self, op: object, av: Any) -> tuple[frozenset[str], bool]:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            return _char_set(op, av, self.ignore_case), False
        if op is sre.AT:
            return frozenset(), True
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            chars, nullable = self.first(av[2])
            return chars, nullable or av[0] == 0
        if op is sre.SUBPATTERN:
            return self.first(av[3])
        if op is sre.BRANCH:
            found = [self.first(alt) for alt in av[1]]
            return frozenset().union(*(c for c, _ in found)), any(n for _, n in found)
        raise AssertionError(f"unhandled pattern node {op}")

    def check(self, items: list[tuple[object, Any]], follow: frozenset[str]) -> None:
        """Raise Ambiguity where a repeat's next iteration and its follower share a start."""
        for index, (op, av) in enumerate(items):
            rest, rest_nullable = self.first(items[index + 1 :])
            after = rest | follow if rest_nullable else rest
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                low, high, body = av
                again, _ = self.first(body)
                # A fixed count ({4}) has no choice to make; a variable one must not
                # be able to stop and go on with the same character.
                if low < high and high > 1 and again & after:
                    shared = "".join(sorted(again & after))[:10]
                    raise Ambiguity(f"repeat {{{low},{high}}} can continue or stop on {shared!r}…")
                self.check(list(body), again | after if high > 1 else after)
            elif op is sre.SUBPATTERN:
                self.check(list(av[3]), after)
            elif op is sre.BRANCH:
                for alt in av[1]:
                    self.check(list(alt), after)


def assert_unambiguous(pattern: str, flags: int = 0) -> None:
    parsed = sre_parse.parse(pattern, flags)
    _Checker(bool(flags & re.IGNORECASE)).check(list(parsed), frozenset())


def _schema_patterns(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "pattern" and isinstance(item, str):
                yield item
            else:
                yield from _schema_patterns(item)
    elif isinstance(value, list):
        for item in value:
            yield from _schema_patterns(item)


def test_the_checker_finds_the_overlapping_repeats_of_the_old_url_pattern() -> None:
    with pytest.raises(Ambiguity):
        assert_unambiguous(OLD_URL_PATTERN)
    with pytest.raises(Ambiguity):
        assert_unambiguous(r"^\s*(\d+)\s*([smhd]?)\s*$")
    assert_unambiguous(r"^[a-z]+(?:-[a-z]+)*$")


@pytest.mark.parametrize(
    "pattern",
    [
        *sorted({p for spec in BUILTIN_TOOLS for p in _schema_patterns(spec.input_schema)}),
        EVENT_TYPE_PATTERN,
        SERVER_NAME_PATTERN,
        NAME_PATTERN.pattern,
    ],
)
def test_patterns_on_agents_input_match_each_character_one_way(pattern: str) -> None:
    assert_unambiguous(pattern)


def _url_pattern() -> str:
    spec = next(s for s in BUILTIN_TOOLS if s.name == "http.request")
    pattern: str = spec.input_schema["properties"]["url"]["pattern"]
    return pattern


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.com", True),
        ("HTTP://example.com:8080/a/b?c=d#e", True),
        ("https://x.y?q", True),
        ("https://x.y#f", True),
        ("https://user:pw@x.y/", True),
        ("https://" + "a" * 2000 + "/" + "b" * 40, True),
        ("https://", False),
        ("https:///path", False),
        ("https://x.y/a b", False),
        ("ftp://x.y", False),
        (" https://x.y", False),
    ],
)
def test_the_url_pattern_still_says_what_it_said(url: str, ok: bool) -> None:
    assert (re.search(_url_pattern(), url) is not None) is ok
    assert (re.search(OLD_URL_PATTERN, url) is not None) is ok


def test_a_hostile_url_near_the_payload_limit_is_refused_at_once() -> None:
    """The worst shape for the old pattern: a long host, then a space (~12 s before)."""
    url = "http://" + "a" * (63 * 1024) + " "
    payload = {"pipeline": [{"id": "a", "uses": "http.request", "with": {"url": url}}]}
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as caught:
        validate_payload(payload, ToolRegistry.builtin(), schedule_kind="manual")
    took = time.perf_counter() - started
    # Generous, so a busy machine does not fail it: the old pattern took 12 s or more.
    assert took < 3, f"checking took {took:.2f}s"
    messages = [e.message for e in caught.value.errors]
    assert any("longer than 2048" in m for m in messages), messages
    assert len(json.dumps(messages)) < 4096  # the errors do not echo the 63 KiB back
