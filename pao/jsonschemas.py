"""JSON Schemas written by others (task types), checked as hostile input and used safely.

A task type's schemas come from an admin's request and are applied to agents' input (a
step's `with` when a task is written, its rendered parameters when the step is offered,
the output a claimer sends back). So before one is stored (`schema_errors`):

- it must be a Draft 2020-12 schema (`Draft202012Validator.check_schema`);
- at most `MAX_SCHEMA_BYTES` of compact JSON, nested at most `MAX_SCHEMA_DEPTH` levels, and
  at most `MAX_EXPANDED_NODES` subschemas once each local `$ref` is counted where it is used
  (a chain of `anyOf` over `$ref`s doubles at each link: 30 links would be 2^30 checks);
- every `$ref` and `$dynamicRef` stays inside the document (starts with `#`) and resolves
  there; `$id` is refused (it would move what `#` means) and `$schema` may only name Draft
  2020-12, at the top. Nothing is ever fetched;
- every `pattern` and `patternProperties` key must compile in a regular expression engine
  that matches in linear time (no lookaround, no backreferences). `validator` matches them
  there, never with Python's backtracking `re`: no input can make a check backtrack. Python's
  `re` would still run them where jsonschema finds evaluated properties for
  `unevaluatedProperties`, so that keyword may not share a schema with `patternProperties`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pao.errors import FieldError

if TYPE_CHECKING:  # loaded by the first check, as in pao.pipeline
    from jsonschema import Draft202012Validator

Loc = tuple[str | int, ...]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_EXPANDED_NODES = 20_000
_REF_KEYS = ("$ref", "$dynamicRef")


def schema_errors(schema: object, loc: Loc, *, root_type: str | None = None) -> list[FieldError]:
    """Every reason `schema` may not be stored (empty: it may). `root_type`: the JSON type
    the schema must declare at its top (`object` for a step's parameters)."""
    if not isinstance(schema, Mapping):
        return [FieldError(loc, 'must be a JSON Schema object, e.g. {"type": "object"}')]
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return [FieldError(loc, "must contain only JSON data (no NaN or Infinity)")]
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SCHEMA_BYTES:
        return [
            FieldError(
                loc,
                f"is {size} bytes as JSON; a schema may have at most {MAX_SCHEMA_BYTES}. "
                "Describe the input more simply",
            )
        ]
    deep = _too_deep(schema, MAX_SCHEMA_DEPTH, loc)
    if deep is not None:
        return [FieldError(deep, f"is nested more than {MAX_SCHEMA_DEPTH} levels deep; flatten it")]
    errors = list(_keyword_errors(schema, loc))
    if errors:
        return errors
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = (*loc, *exc.absolute_path)
        return [FieldError(where, f"is not a valid JSON Schema (Draft 2020-12): {exc.message}")]
    errors = list(_ref_errors(schema, loc))
    if errors:
        return errors
    expanded = _expanded_size(schema)
    if expanded > MAX_EXPANDED_NODES:
        return [
            FieldError(
                loc,
                f"expands to more than {MAX_EXPANDED_NODES} subschemas once its $refs are "
                "followed; checking input against it would cost too much. Simplify it",
            )
        ]
    if root_type is not None and schema.get("type") != root_type:
        return [
            FieldError(
                (*loc, "type"),
                f"must be {root_type!r}: a step's 'with' is a JSON object, so its schema "
                f'starts {{"type": "{root_type}", "properties": {{...}}}}',
            )
        ]
    return _probe(schema, loc)


def _too_deep(value: Any, limit: int, loc: Loc) -> Loc | None:
    stack: list[tuple[Loc, Any, int]] = [(loc, value, 1)]
    while stack:
        where, item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: list[tuple[Loc, Any]] = [((*where, k), v) for k, v in item.items()]
        elif isinstance(item, list):
            children = [((*where, i), v) for i, v in enumerate(item)]
        else:
            continue
        if depth > limit:
            return where
        stack.extend((w, v, depth + 1) for w, v in children)
    return None


def _walk(value: Any, loc: Loc) -> Iterator[tuple[Loc, Mapping[str, Any]]]:
    """Every object in `value` with its location (a schema is nested at most 32 deep)."""
    if isinstance(value, Mapping):
        yield loc, value
        for key, item in value.items():
            yield from _walk(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*loc, index))


def _keyword_errors(schema: Mapping[str, Any], loc: Loc) -> Iterator[FieldError]:
    uses_pattern_properties = uses_unevaluated = False
    for where, node in _walk(schema, loc):
        for key in _REF_KEYS:
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                yield FieldError(
                    (*where, key),
                    f"{ref[:200]!r} refers outside this schema; only local references "
                    "('#/$defs/...') are allowed, and nothing is ever fetched",
                )
        if isinstance(node.get("$id"), str):
            yield FieldError(
                (*where, "$id"),
                "$id is not allowed: it changes what '#' refers to. Remove it and refer with "
                "'#/$defs/<name>'",
            )
        dialect = node.get("$schema")
        if isinstance(dialect, str) and (where != loc or dialect != SCHEMA_DIALECT):
            yield FieldError(
                (*where, "$schema"),
                f"only {SCHEMA_DIALECT!r} is supported, and only at the top; remove it",
            )
        pattern = node.get("pattern")
        if isinstance(pattern, str) and not _compiles(pattern):
            yield FieldError((*where, "pattern"), _PATTERN_RULE)
        properties = node.get("patternProperties")
        if isinstance(properties, Mapping):
            uses_pattern_properties = True
            for key in properties:
                if not _compiles(str(key)):
                    yield FieldError((*where, "patternProperties", str(key)), _PATTERN_RULE)
        if "unevaluatedProperties" in node:
            uses_unevaluated = True
    if uses_pattern_properties and uses_unevaluated:
        yield FieldError(
            loc,
            "uses both patternProperties and unevaluatedProperties, which together would "
            "match patterns with a backtracking engine; use additionalProperties instead",
        )


_PATTERN_RULE = (
    "is not a pattern this server can match in linear time (lookaround and backreferences "
    "are not supported); rewrite it without them"
)


def _ref_errors(schema: Mapping[str, Any], loc: Loc) -> Iterator[FieldError]:
    anchors = {
        node[key]
        for _, node in _walk(schema, loc)
        for key in ("$anchor", "$dynamicAnchor")
        if isinstance(node.get(key), str)
    }
    for where, node in _walk(schema, loc):
        for key in _REF_KEYS:
            ref = node.get(key)
            if isinstance(ref, str) and _resolve(schema, ref, anchors) is _MISSING:
                yield FieldError(
                    (*where, key), f"{ref[:200]!r} does not point to anything in this schema"
                )


_MISSING = object()


def _resolve(schema: Mapping[str, Any], ref: str, anchors: set[str]) -> Any:
    """What a local reference points to in `schema`, or _MISSING."""
    fragment = ref[1:]
    if fragment and not fragment.startswith("/"):
        return True if fragment in anchors else _MISSING  # an anchor's node: not needed here
    node: Any = schema
    for raw in fragment.split("/")[1:] if fragment else []:
        part = raw.replace("%25", "%").replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _expanded_size(schema: Mapping[str, Any]) -> int:
    """How many objects and arrays checking could visit, each `$ref` counted as its target
    (a target already being counted, a recursion, counts 1), up to the cap."""
    anchors: set[str] = set()
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, Mapping | list):
            return 0
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            return 1
        active.add(key)
        total = 1
        items = node.values() if isinstance(node, Mapping) else node
        for item in items:
            total += size(item)
            if total > MAX_EXPANDED_NODES:
                break
        if isinstance(node, Mapping):
            for ref_key in _REF_KEYS:
                ref = node.get(ref_key)
                if isinstance(ref, str) and total <= MAX_EXPANDED_NODES:
                    target = _resolve(schema, ref, anchors)
                    if target is not _MISSING:
                        total += size(target)
        active.discard(key)
        memo[key] = total = min(total, MAX_EXPANDED_NODES + 1)
        return total

    return size(schema)


def _probe(schema: Mapping[str, Any], loc: Loc) -> list[FieldError]:
    """Check a few values against the schema: a reference loop that never reaches into the
    value (`{"$ref": "#"}`) would recurse without end on every check."""
    checker = validator(schema)
    probes: tuple[object, ...] = (None, {}, [], "", 0)
    for value in probes:
        try:
            for _ in checker.iter_errors(value):
                pass
        except RecursionError:
            return [
                FieldError(
                    loc,
                    "refers to itself without end (a $ref loop that never looks inside the "
                    "value); break the loop",
                )
            ]
        except Exception as exc:  # an unresolvable reference, an unknown type and the like
            return [FieldError(loc, f"cannot be applied: {str(exc)[:300]}")]
    return []


# Linear-time patterns ---------------------------------------------------------


def _compiles(pattern: str) -> bool:
    try:
        _matcher(pattern)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _matcher(pattern: str) -> Any:
    """A matcher for one pattern in the linear-time engine; ValueError if it has none."""
    import jsonschema_rs

    try:
        return jsonschema_rs.Draft202012Validator(
            {"pattern": pattern}, pattern_options=jsonschema_rs.RegexOptions()
        )
    except Exception as exc:  # jsonschema_rs.ValidationError: not a pattern it can match
        raise ValueError(pattern) from exc


def matches(pattern: str, text: str) -> bool:
    """Whether `pattern` (ECMA 262 style, unanchored) finds a match in `text`, in linear time."""
    return bool(_matcher(pattern).is_valid(text))


@functools.lru_cache(maxsize=1)
def _linear_class() -> type[Draft202012Validator]:
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import ValidationError

    def pattern(
        checker: Any, patrn: str, instance: Any, schema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        if checker.is_type(instance, "string") and not matches(patrn, instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(
        checker: Any, rules: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        if not checker.is_type(instance, "object"):
            return
        for patrn, subschema in rules.items():
            for key, value in instance.items():
                if matches(patrn, key):
                    yield from checker.descend(value, subschema, path=key, schema_path=patrn)

    def additional_properties(
        checker: Any, rule: Any, instance: Any, schema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        if not checker.is_type(instance, "object"):
            return
        known = schema.get("properties", {})
        patterns = list(schema.get("patternProperties", {}))
        extras = [
            key
            for key in instance
            if key not in known and not any(matches(p, key) for p in patterns)
        ]
        if checker.is_type(rule, "object"):
            for extra in extras:
                yield from checker.descend(instance[extra], rule, path=extra)
        elif not rule and extras:
            listed = ", ".join(repr(e) for e in sorted(extras)[:10])
            yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")

    cls: type[Draft202012Validator] = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator,
        {
            "pattern": pattern,
            "patternProperties": pattern_properties,
            "additionalProperties": additional_properties,
        },
    )
    return cls


@functools.lru_cache(maxsize=512)
def _cached(text: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    cls = _linear_class()
    return cls(json.loads(text), format_checker=Draft202012Validator.FORMAT_CHECKER)


def validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    """A validator for a checked schema whose patterns match in linear time; cached."""
    return _cached(json.dumps(schema, sort_keys=True, separators=(",", ":")))


def instance_errors(
    schema: Mapping[str, Any], value: Any, loc: Loc, *, what: str
) -> list[FieldError]:
    """Where `value` breaks `schema`, each error at its location under `loc`; `what` names
    the schema in the message. At most 20 errors; a schema that cannot be applied is one."""
    try:
        found = sorted(
            validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path]
        )
    except RecursionError:
        return [FieldError(loc, f"{what} refers to itself without end; fix the task type")]
    out = []
    for err in found[:20]:
        message = err.message if len(err.message) <= 300 else err.message[:300] + " …"
        out.append(FieldError((*loc, *err.absolute_path), f"{message}; see {what}"))
    return out
