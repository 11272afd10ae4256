"""`${…}` lookups and guards in task payloads.

A lookup is plain data access on JSON values: dict keys and list indexes, nothing
else. There is no expression language on purpose, so a payload can never run code,
touch Python attributes or read the environment. Rendering is a single pass: a
substituted value is inserted as data and never scanned for lookups again.

Guards (a step's ``if``, a condition task's ``condition``) are one of::

    ${path}                 true by JSON truthiness
    not ${path} / !${path}  negated truthiness
    ${path} OP literal      OP in == != > >= < <=; literal is a JSON number,
                            "string", true, false or null

The lookup is always on the left. ``not`` only negates a bare lookup; to negate a
comparison use the opposite operator, which reads better and cannot be misparsed.

Rendering may be given a `Budget` of bytes: lookups multiply data (a 10 MiB result
looked up 200 times is 2 GiB), so the size is counted as the output is made and the
render stops at the first piece that passes the budget, before anything that large
exists. A value is measured before it is copied or written out as JSON.
"""

from __future__ import annotations

import copy
import json
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from pao.errors import PaoError

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

ROOTS = ("steps", "event", "run", "task")
"""Where a lookup may start; anything else (env, os, __import__…) is rejected."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INDEX = re.compile(r"0|[1-9][0-9]*")
_MAX_LISTED = 20


class TemplateError(PaoError):
    """A `${…}` lookup or guard is malformed or names data that does not exist."""


class TooLarge(TemplateError):
    """The rendered value passed its budget; `size` is what was counted when it stopped."""

    def __init__(self, limit: int, size: int, where: tuple[str | int, ...], lookup: str | None):
        at = ".".join(str(seg) for seg in where) or "the top level"
        by = f" by {lookup}" if lookup else ""
        super().__init__(f"more than {limit} bytes (at least {size}), passed at {at}{by}")
        self.limit = limit
        self.size = size
        self.where = where
        self.lookup = lookup


class Budget:
    """Bytes a render may produce, counted as compact JSON (see `json_size`)."""

    __slots__ = ("limit", "spent")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self, size: int, where: tuple[str | int, ...], lookup: str | None = None) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise TooLarge(self.limit, self.spent, where, lookup)

    @property
    def left(self) -> int:
        return self.limit - self.spent


@dataclass(frozen=True)
class Ref:
    """One `${…}` lookup: a root and the keys/indexes to follow from it."""

    root: str
    path: tuple[str | int, ...]

    @property
    def text(self) -> str:
        """The lookup as a user would write it, for error messages."""
        return "${" + _dotted(self.root, self.path) + "}"

    def resolve(self, context: Mapping[str, JSONValue]) -> JSONValue:
        """Follow the path through JSON data only; a missing step is an error, not ""."""
        if self.root not in context:
            available = ", ".join(sorted(context)) or "nothing"
            raise TemplateError(
                f"{self.text}: '{self.root}' is not available here (available: {available})"
            )
        current: object = context[self.root]
        for depth, seg in enumerate(self.path):
            where = _dotted(self.root, self.path[:depth])
            if isinstance(current, Mapping):
                key = str(seg)
                if key not in current:
                    raise TemplateError(
                        f"{self.text}: '{where}' has no key '{key}'; {_describe_keys(current)}"
                    )
                current = current[key]
            elif isinstance(current, list | tuple):
                if not isinstance(seg, int):
                    raise TemplateError(
                        f"{self.text}: '{where}' is a list of {len(current)} items, not an "
                        f"object; use an index such as {where}.0"
                    )
                if seg >= len(current):
                    raise TemplateError(
                        f"{self.text}: '{where}' is a list of {len(current)} items; "
                        f"index {seg} is out of range"
                    )
                current = current[seg]
            else:
                raise TemplateError(
                    f"{self.text}: '{where}' is {_kind(current)}, which has no '{seg}'"
                )
        return _as_json(current)


@dataclass(frozen=True)
class Template:
    """A string split into literal text and lookups."""

    source: str
    parts: tuple[str | Ref, ...]

    @property
    def refs(self) -> list[Ref]:
        return [p for p in self.parts if isinstance(p, Ref)]

    @property
    def is_single_lookup(self) -> bool:
        """True when the whole string is one lookup, so the value keeps its JSON type."""
        return len(self.parts) == 1 and isinstance(self.parts[0], Ref)

    def render(
        self,
        context: Mapping[str, JSONValue],
        budget: Budget | None = None,
        where: tuple[str | int, ...] = (),
    ) -> JSONValue:
        """The string with its lookups filled in; each piece is counted before it is kept."""
        if self.is_single_lookup:
            ref = self.parts[0]
            assert isinstance(ref, Ref)
            value = ref.resolve(context)
            if budget is not None:
                budget.spend(json_size(value, budget.left), where, ref.text)
            return copy.deepcopy(value)
        if budget is not None:
            budget.spend(2, where)  # the quotes
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                if budget is not None:
                    budget.spend(_utf8_size(part), where)
                out.append(part)
                continue
            value = part.resolve(context)
            if budget is not None:
                # Measured before `_as_text` writes a non-string value out as JSON.
                size = json_size(value, budget.left) - (2 if isinstance(value, str) else 0)
                budget.spend(size, where, part.text)
            out.append(_as_text(value))
        return "".join(out)


def parse_path(text: str) -> Ref:
    """Parse the inside of `${…}`; only names, dots and non-negative indexes are allowed."""
    src = text.strip()
    if not src:
        raise TemplateError("empty lookup ${}; write a path such as ${steps.<id>.<field>}")
    m = _IDENT.match(src)
    if m is None:
        raise _bad_path(src, 0)
    root = m.group()
    if root not in ROOTS:
        raise TemplateError(
            f"unknown root '{root}' in ${{{src}}}; a lookup starts with one of: " + ", ".join(ROOTS)
        )
    pos = m.end()
    path: list[str | int] = []
    while pos < len(src):
        ch = src[pos]
        if ch == ".":
            m = _IDENT.match(src, pos + 1) or _INDEX.match(src, pos + 1)
            if m is None:
                raise _bad_path(src, pos + 1)
            seg = m.group()
            path.append(int(seg) if seg.isdigit() else seg)
            pos = m.end()
        elif ch == "[":
            m = _INDEX.match(src, pos + 1)
            if m is None or m.end() >= len(src) or src[m.end()] != "]":
                raise TemplateError(
                    f"bad index in ${{{src}}} at position {pos}; write [0], [1], … "
                    "with a non-negative whole number"
                )
            path.append(int(m.group()))
            pos = m.end() + 1
        else:
            raise _bad_path(src, pos)
    return Ref(root, tuple(path))


def parse_template(s: str) -> Template:
    """Split a string into text and lookups; `$${` is a literal `${`."""
    parts: list[str | Ref] = []
    buf: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        if s.startswith("$${", i):
            buf.append("${")
            i += 3
        elif s.startswith("${", i):
            end = s.find("}", i + 2)
            if end < 0:
                raise TemplateError(
                    f"unclosed ${{ at position {i}; close the lookup with }} "
                    "or write $${ for a literal ${"
                )
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(parse_path(s[i + 2 : end]))
            i = end + 1
        else:
            buf.append(s[i])
            i += 1
    if buf:
        parts.append("".join(buf))
    return Template(s, tuple(parts))


def iter_strings(
    value: JSONValue, loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string value with its location; keys are data, not templates."""
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_strings(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from iter_strings(item, (*loc, index))


def references(value: JSONValue) -> list[Ref]:
    """All lookups in a JSON value, so callers can check them before anything runs."""
    refs: list[Ref] = []
    for _, text in iter_strings(value):
        refs.extend(parse_template(text).refs)
    return refs


def render(
    value: JSONValue, context: Mapping[str, JSONValue], *, budget: Budget | None = None
) -> JSONValue:
    """Substitute lookups in every string of `value`, in one pass.

    With a `budget`, raise TooLarge as soon as the output counted so far passes it;
    `budget.spent` is then the output's size (its compact JSON, see `json_size`).
    """
    if budget is None:
        return _render(value, context)
    return _render_within(value, context, budget, ())


def _render(value: JSONValue, context: Mapping[str, JSONValue]) -> JSONValue:
    if isinstance(value, str):
        return parse_template(value).render(context)
    if isinstance(value, dict):
        return {key: _render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context) for item in value]
    return value


def _render_within(
    value: JSONValue,
    context: Mapping[str, JSONValue],
    budget: Budget,
    where: tuple[str | int, ...],
) -> JSONValue:
    if isinstance(value, str):
        return parse_template(value).render(context, budget, where)
    if isinstance(value, dict):
        budget.spend(1 + len(value), where)  # braces and commas: 2 + (n - 1)
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            budget.spend(_utf8_size(key) + 3, where)  # the key, its quotes and colon
            out[key] = _render_within(item, context, budget, (*where, key))
        return out
    if isinstance(value, list):
        budget.spend(1 + len(value) if value else 2, where)  # brackets and commas
        return [
            _render_within(item, context, budget, (*where, index))
            for index, item in enumerate(value)
        ]
    budget.spend(json_size(value), where)
    return value


def json_size(value: object, limit: int | None = None) -> int:
    """Bytes of `value` as compact JSON in UTF-8, escapes aside; stops once past `limit`.

    What a step holds and stores, measured without writing the JSON out: a walk of the
    value that ends as soon as the count passes `limit`, so measuring something far too
    large costs no more than the limit. Anything that is not JSON counts as its `str`.
    """
    total = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += _utf8_size(item) + 2
        elif item is None or item is True:
            total += 4
        elif item is False:
            total += 5
        elif isinstance(item, int):
            # str() of a huge int is slow (and refused past 4300 digits): estimate those.
            total += len(str(item)) if -(10**18) < item < 10**18 else item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += len(repr(item)) if math.isfinite(item) else 4
        elif isinstance(item, Mapping):
            total += 1 + len(item) if item else 2  # braces and commas
            for key, child in item.items():
                total += _utf8_size(str(key)) + 3  # the key, its quotes and colon
                stack.append(child)
        elif isinstance(item, list | tuple):
            total += 1 + len(item) if item else 2
            stack.extend(item)
        else:
            total += _utf8_size(str(item)) + 2
        if limit is not None and total > limit:
            return total
    return total


def _utf8_size(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


# Guards -----------------------------------------------------------------------

_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")


@dataclass(frozen=True)
class Guard:
    """A parsed `if`/`condition`: truthiness of a lookup, or lookup OP literal."""

    source: str
    ref: Ref
    op: str | None = None
    literal: JSONValue = None
    negate: bool = False

    @property
    def references(self) -> list[Ref]:
        return [self.ref]

    def evaluate(self, context: Mapping[str, JSONValue]) -> bool:
        value = self.ref.resolve(context)
        if self.op is None:
            return truthy(value) != self.negate
        if self.op == "==":
            return json_equal(value, self.literal)
        if self.op == "!=":
            return not json_equal(value, self.literal)
        return self._order(value)

    def _order(self, value: JSONValue) -> bool:
        left, right = value, self.literal
        both_numbers = _is_number(left) and _is_number(right)
        if both_numbers or (isinstance(left, str) and isinstance(right, str)):
            return _ORDER[self.op or ""](left, right)
        raise TemplateError(
            f"cannot evaluate {self.source!r}: {self.ref.text} is {_kind(left)} and the "
            f"literal is {_kind(right)}; {self.op} compares two numbers or two strings"
        )


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def parse_guard(text: str) -> Guard:
    """Parse a guard string; see the module docstring for the grammar."""
    src = text.strip()
    if not src:
        raise TemplateError(
            "empty guard; write a lookup such as ${steps.check.ok} "
            "or a comparison such as ${steps.check.count} > 3"
        )
    negate = False
    rest = src
    if rest.startswith("!") and not rest.startswith("!="):
        negate, rest = True, rest[1:].lstrip()
    elif re.match(r"not(\s|\$)", rest):
        negate, rest = True, rest[3:].lstrip()
    if not rest.startswith("${"):
        raise TemplateError(
            f"guard {src!r} must start with a ${{…}} lookup, e.g. ${{steps.check.count}} > 3"
        )
    end = rest.find("}")
    if end < 0:
        raise TemplateError(f"guard {src!r} has an unclosed ${{; close the lookup with }}")
    ref = parse_path(rest[2:end])
    rest = rest[end + 1 :].strip()
    if not rest:
        return Guard(src, ref, negate=negate)
    if negate:
        raise TemplateError(
            f"guard {src!r}: 'not' only negates a bare lookup; "
            "for a comparison use the opposite operator (== ↔ !=, > ↔ <=, …)"
        )
    op = next((o for o in _OPERATORS if rest.startswith(o)), None)
    if op is None:
        raise TemplateError(
            f"guard {src!r}: expected an operator after {ref.text}, one of " + " ".join(_OPERATORS)
        )
    return Guard(src, ref, op, _parse_literal(src, rest[len(op) :].strip()))


def _parse_literal(src: str, text: str) -> JSONValue:
    hint = 'compare with a number, a "double-quoted string", true, false or null'
    if "${" in text:
        raise TemplateError(f"guard {src!r}: comparing two lookups is not supported; {hint}")
    if not text:
        raise TemplateError(f"guard {src!r}: missing value after the operator; {hint}")

    def no_constants(name: str) -> JSONValue:
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=no_constants)
    except ValueError:
        raise TemplateError(f"guard {src!r}: {text!r} is not a valid value; {hint}") from None
    if isinstance(value, dict | list):
        raise TemplateError(f"guard {src!r}: {text!r} is not a valid value; {hint}")
    result: JSONValue = value
    return result


def truthy(value: JSONValue) -> bool:
    """JSON truthiness: null, false, 0, "", [] and {} are false."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float | str | list | dict):
        return bool(value)
    return True


def json_equal(a: JSONValue, b: JSONValue) -> bool:
    """Equality as JSON sees it: true is not 1, but 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# Helpers ----------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return "not JSON data"


def _dotted(root: str, path: tuple[str | int, ...]) -> str:
    return ".".join([root, *(str(seg) for seg in path)])


def _describe_keys(obj: Mapping[object, object]) -> str:
    keys = sorted(str(k) for k in obj)
    if not keys:
        return "it is an empty object"
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" (and {len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"it has: {shown}{more}"


def _bad_path(src: str, pos: int) -> TemplateError:
    return TemplateError(
        f"invalid lookup ${{{src}}} at position {pos}: a lookup is only a path of names "
        "and indexes such as ${steps.fetch.items.0.title}; operators, calls, quotes "
        "and parentheses are not allowed"
    )


def _as_json(value: object) -> JSONValue:
    """Refuse non-JSON objects in the context rather than expose them."""
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    if isinstance(value, tuple):
        return [_as_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _as_json(v) for k, v in value.items()}
    raise TemplateError(f"value of type {type(value).__name__} is not JSON data")


def _as_text(value: JSONValue) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
