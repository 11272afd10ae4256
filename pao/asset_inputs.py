"""Tool inputs that take assets: the fields a JSON Schema marks `"format": "asset"`.

A tool (an MCP tool, a task type, a built-in) says which of its inputs are asset ids by
`"format": "asset"` in its input schema, optionally with `contentMediaType` (`audio/*`,
`image/png`, or several separated by commas). `asset_fields` finds those fields in a
step's input by walking the schema along the value, as a validator would: `properties`,
`patternProperties`, `additionalProperties`, `items`, `prefixItems`, local `$ref`s,
`allOf`, and of `anyOf` / `oneOf` / `if` only the branches the value matches.

Pure: the checks that need the database (is the asset there, may the task's owner use it)
are `pao.domain.assets.check_step_inputs`, at create for literal ids and before the step starts
for every id.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pao.errors import FieldError
from pao.jsonschemas import matches, validator

if TYPE_CHECKING:  # jsonschema is loaded by the first walk that needs a branch decided
    from jsonschema import FormatChecker

Loc = tuple[str | int, ...]

ASSET_FORMAT = "asset"
MAX_VISITS = 10_000
"""Schema nodes one walk may visit: a schema of `$ref`s cannot make a check cost more."""
MAX_DEPTH = 64
MAX_STEP_ASSETS = 100
"""Assets one step's input may name."""
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class AssetField:
    """One value of an input that must be an asset id, and the media types it accepts."""

    path: Loc  # inside the input (a step's `with`)
    value: Any
    media: str | None = None  # contentMediaType: "audio/*", "image/png", "a/b, c/d"

    def asset_id(self) -> uuid.UUID | None:
        """The id the value names, or None if it is not one."""
        if not isinstance(self.value, str) or not _UUID.match(self.value):
            return None
        return uuid.UUID(self.value)


def mentions_assets(schema: Mapping[str, Any]) -> bool:
    """Whether any subschema says `"format": "asset"` (no walk needed when none does)."""
    stack: list[Any] = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if item.get("format") == ASSET_FORMAT:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


Valid = Callable[[Mapping[str, Any], Any], bool]


def asset_fields(schema: Mapping[str, Any], value: Any) -> list[AssetField]:
    """Every field of `value` that `schema` marks as an asset id, in document order, each
    once. A schema that cannot be applied (a broken `$ref`, a pattern the linear engine
    refuses) contributes nothing where it breaks."""
    if not mentions_assets(schema):
        return []
    valid = _validity(schema)
    found: dict[Loc, AssetField] = {}
    budget = [MAX_VISITS]
    for field in _walk(schema, schema, value, (), 0, valid, budget):
        found.setdefault(field.path, field)
    return list(found.values())


def _validity(root: Mapping[str, Any]) -> Valid:
    """Whether a value matches a subschema of `root` (its `$ref`s read in `root`).

    Where that cannot be told (a broken `$ref`, a pattern the linear engine refuses, an
    endless loop), the branch counts as taken: a value it marks is checked as an asset
    rather than passed on unchecked."""
    try:
        checker = validator(root).evolve(format_checker=_formats())
    except Exception:
        return lambda sub, value: True

    def valid(sub: Mapping[str, Any], value: Any) -> bool:
        try:
            return bool(checker.evolve(schema=sub).is_valid(value))
        except Exception:
            return True

    return valid


@functools.cache
def _formats() -> FormatChecker:
    """Draft 2020-12's format checks, and `asset`: a string shaped like an asset id (so a
    branch for a URL and a branch for an asset tell a URL from an id)."""
    from jsonschema import Draft202012Validator, FormatChecker

    checker = FormatChecker()
    checker.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)
    checker.checks(ASSET_FORMAT)(
        lambda value: not isinstance(value, str) or bool(_UUID.match(value))
    )
    return checker


def _walk(
    root: Mapping[str, Any],
    node: Any,
    value: Any,
    path: Loc,
    depth: int,
    valid: Valid,
    budget: list[int],
) -> Iterator[AssetField]:
    if not isinstance(node, Mapping) or depth > MAX_DEPTH or budget[0] <= 0:
        return
    budget[0] -= 1
    deeper = depth + 1
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = _resolve(root, ref)
        if target is not None:
            yield from _walk(root, target, value, path, deeper, valid, budget)
    if node.get("format") == ASSET_FORMAT:
        wanted = node.get("contentMediaType")
        yield AssetField(path, value, wanted if isinstance(wanted, str) else None)
    for sub in _list(node.get("allOf")):
        yield from _walk(root, sub, value, path, deeper, valid, budget)
    for key in ("anyOf", "oneOf"):
        for sub in _list(node.get(key)):
            if isinstance(sub, Mapping) and valid(sub, value):
                yield from _walk(root, sub, value, path, deeper, valid, budget)
    condition = node.get("if")
    if isinstance(condition, Mapping):
        branch = node.get("then") if valid(condition, value) else node.get("else")
        yield from _walk(root, branch, value, path, deeper, valid, budget)
    if isinstance(value, Mapping):
        yield from _properties(root, node, value, path, deeper, valid, budget)
    elif isinstance(value, list):
        prefix = _list(node.get("prefixItems"))
        items = node.get("items")
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else items
            yield from _walk(root, sub, item, (*path, index), deeper, valid, budget)


def _properties(
    root: Mapping[str, Any],
    node: Mapping[str, Any],
    value: Mapping[str, Any],
    path: Loc,
    depth: int,
    valid: Valid,
    budget: list[int],
) -> Iterator[AssetField]:
    properties = node.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    patterns = node.get("patternProperties")
    patterns = patterns if isinstance(patterns, Mapping) else {}
    additional = node.get("additionalProperties")
    for key, item in value.items():
        where = (*path, key)
        matched = key in properties
        if matched:
            yield from _walk(root, properties[key], item, where, depth, valid, budget)
        for pattern, sub in patterns.items():
            try:
                hit = matches(str(pattern), str(key))
            except ValueError:  # not a pattern the linear engine takes: checked anyway
                hit = True
            if hit:
                matched = True
                yield from _walk(root, sub, item, where, depth, valid, budget)
        if not matched:
            yield from _walk(root, additional, item, where, depth, valid, budget)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _resolve(root: Mapping[str, Any], ref: str) -> Any:
    """What a local `#/…` reference points to in `root`; None for anything else."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def media_matches(wanted: str | None, media_type: str) -> bool:
    """Whether an asset of `media_type` is one `wanted` (a contentMediaType) accepts:
    an exact type, a family such as `audio/*`, or several separated by commas."""
    if wanted is None:
        return True
    from pao import media  # its type detector is loaded by whoever stores files

    have = media.canonical(media_type)
    for part in wanted.split(","):
        text = part.strip().lower()
        if text in ("", "*", "*/*"):
            return True
        if text.endswith("/*"):
            if have.startswith(text[:-1]):
                return True
        elif media.canonical(text) == have:
            return True
    return False


def not_an_id(field: AssetField, loc: Loc) -> FieldError:
    """The error for a value that cannot be an asset id at all."""
    shown = repr(field.value)
    shown = shown if len(shown) <= 80 else shown[:77] + "…"
    return FieldError(
        (*loc, *field.path),
        f"{shown} is not an asset id; give the id of an asset (upload a file with "
        "POST /assets), or a ${…} lookup of one such as ${steps.<id>.asset_id}",
    )


def is_templated(value: Any) -> bool:
    """A value a `${…}` lookup fills in: checked when the step runs, not before."""
    return isinstance(value, str) and "${" in value
