"""Checking a task's payload pipeline when the task is created.

Everything that can be known before a run is checked here, and every problem is
reported at once with its exact location, so an agent can fix a payload in one
round trip instead of discovering errors one failed run at a time.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pao.asset_inputs import AssetField, asset_fields, is_templated, not_an_id
from pao.errors import FieldError, InvalidInput
from pao.templates import Ref, TemplateError, iter_strings, parse_guard, parse_template
from pao.tools import ToolRegistry, ToolSpec, UnknownTool

if TYPE_CHECKING:  # jsonschema is loaded by the first check (workers never need it)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError as SchemaValidationError

Loc = tuple[str | int, ...]

MAX_STEPS = 50
MAX_WITH_DEPTH = 32
MAX_PAYLOAD_DEPTH = 64
MAX_PAYLOAD_BYTES = 64 * 1024
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
STEP_FIELDS = ("id", "uses", "with", "save_as", "if", "timeout_seconds")
# `payload.resume`: where a new attempt of a run starts (a retry, a lost lease, a restart).
RESUME_FROM_LAST_SUCCESS = "from_last_success"  # after the last step that succeeded
RESUME_FROM_START = "from_start"  # every step again
RESUME_MODES = (RESUME_FROM_LAST_SUCCESS, RESUME_FROM_START)

_NAME_RULE = "start with a letter or '_' and use at most 64 letters, digits, '_' or '-'"
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")
_MAX_ECHO = 200  # characters of a bad value an error message repeats


class Step(BaseModel):
    """One pipeline step, as the worker will run it."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    id: str
    uses: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    save_as: str | None = None
    if_: str | None = Field(default=None, alias="if")
    timeout_seconds: int | None = Field(default=None, ge=1, le=3600)

    @property
    def result_name(self) -> str:
        """The name later steps use in `${steps.<name>}` for this step's result."""
        return self.save_as or self.id


class Pipeline(BaseModel):
    """The validated pipeline of a payload; `condition` only for condition tasks."""

    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(default_factory=list)
    condition: str | None = None
    resume: str = RESUME_FROM_LAST_SUCCESS


def load_pipeline(payload: Mapping[str, Any]) -> Pipeline:
    """A stored payload's pipeline, parsed without checking it again.

    Only `validate_payload` lets a payload into the database, so a worker need
    not pay for the checks (schemas, references) once per task it runs.
    """
    try:
        steps = [Step.model_validate(raw) for raw in payload.get("pipeline", [])]
    except ValidationError as exc:
        message = f"stored pipeline is unreadable: {exc}"
        raise InvalidInput([FieldError(("payload", "pipeline"), message)], message) from None
    condition = payload.get("condition")
    return Pipeline(
        steps=steps,
        condition=condition if isinstance(condition, str) else None,
        resume=_resume(payload),
    )


def _resume(payload: Mapping[str, Any]) -> str:
    resume = payload.get("resume", RESUME_FROM_LAST_SUCCESS)
    return RESUME_FROM_START if resume == RESUME_FROM_START else RESUME_FROM_LAST_SUCCESS


def validate_payload(
    payload: Mapping[str, Any], registry: ToolRegistry, *, schedule_kind: str
) -> Pipeline:
    """Parse the payload's pipeline or raise InvalidInput listing every problem."""
    root: Loc = ("payload",)
    if not isinstance(payload, Mapping):
        raise InvalidInput.one(root, "payload must be a JSON object")
    # Shape limits first: later checks recurse, and a huge payload is not worth checking.
    deep = _too_deep(payload, MAX_PAYLOAD_DEPTH, root)
    if deep is not None:
        raise InvalidInput.one(
            deep, f"payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep; flatten it"
        )
    try:
        encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise InvalidInput.one(root, "payload must contain only JSON data") from None
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidInput.one(
            root,
            f"payload is {size} bytes as JSON; at most {MAX_PAYLOAD_BYTES} are allowed. "
            "Keep large data elsewhere and fetch it in a step",
        )

    errors: list[FieldError] = []
    has_event = schedule_kind == "event"
    raw_steps = payload.get("pipeline", [])
    if not isinstance(raw_steps, list):
        errors.append(
            FieldError(
                (*root, "pipeline"),
                "pipeline must be a list of steps, e.g. "
                '[{"id": "fetch", "uses": "http.request", "with": {"url": "https://…"}}]',
            )
        )
        raw_steps = []
    if len(raw_steps) > MAX_STEPS:
        errors.append(
            FieldError(
                (*root, "pipeline"),
                f"pipeline has {len(raw_steps)} steps; at most {MAX_STEPS} are allowed. "
                "Split the work into several tasks chained by events",
            )
        )

    steps = _check_steps(raw_steps, registry, has_event=has_event, errors=errors)

    condition = payload.get("condition")
    if schedule_kind == "condition":
        _check_condition(payload, raw_steps, errors)
    elif "condition" in payload:
        errors.append(
            FieldError(
                (*root, "condition"),
                "only condition tasks have a condition; remove it, or set schedule_kind "
                "to 'condition'",
            )
        )

    resume = payload.get("resume", RESUME_FROM_LAST_SUCCESS)
    if resume not in RESUME_MODES:
        errors.append(
            FieldError(
                (*root, "resume"),
                f"resume must be {RESUME_FROM_LAST_SUCCESS!r} (the default: a new attempt of a "
                f"run starts after its last step that succeeded) or {RESUME_FROM_START!r} "
                f"(every step again), not {_shortened(resume)}",
            )
        )

    if errors:
        raise InvalidInput(errors)
    return Pipeline(
        steps=steps,
        condition=condition if isinstance(condition, str) else None,
        resume=_resume(payload),
    )


def _check_steps(
    raw_steps: Sequence[Any],
    registry: ToolRegistry,
    *,
    has_event: bool,
    errors: list[FieldError],
) -> list[Step]:
    base: Loc = ("payload", "pipeline")
    ids = [s.get("id") if isinstance(s, Mapping) else None for s in raw_steps]
    save_as = [s.get("save_as") if isinstance(s, Mapping) else None for s in raw_steps]
    steps: list[Step] = []
    earlier: list[str] = []
    for index, raw in enumerate(raw_steps):
        loc: Loc = (*base, index)
        if not isinstance(raw, Mapping):
            errors.append(
                FieldError(loc, 'each step must be an object with at least "id" and "uses"')
            )
            continue
        before = len(errors)
        errors.extend(_model_errors(raw, loc))
        errors.extend(_name_errors(index, ids, save_as, loc))
        spec = _tool(raw.get("uses"), registry, loc, errors)
        with_ = raw.get("with")
        if isinstance(with_, Mapping):
            errors.extend(_with_errors(with_, spec, earlier, has_event, (*loc, "with")))
        guard = raw.get("if")
        if isinstance(guard, str):
            errors.extend(_guard_errors(guard, earlier, has_event, (*loc, "if")))
        for name in (ids[index], save_as[index]):
            if isinstance(name, str) and name not in earlier:
                earlier.append(name)
        if len(errors) == before:
            steps.append(Step.model_validate(dict(raw)))
    return steps


def _model_errors(raw: Mapping[str, Any], loc: Loc) -> list[FieldError]:
    try:
        Step.model_validate(dict(raw))
    except ValidationError as exc:
        out: list[FieldError] = []
        for err in exc.errors(include_url=False):
            where = (*loc, *err["loc"])
            if err["type"] == "extra_forbidden":
                message = f"unknown field {err['loc'][-1]!r}; a step has only: " + ", ".join(
                    STEP_FIELDS
                )
            elif err["type"] == "missing":
                message = f"required; every step needs {err['loc'][-1]!r}"
            else:
                message = err["msg"]
            out.append(FieldError(where, message))
        return out
    return []


def _name_errors(
    index: int, ids: Sequence[object], save_as: Sequence[object], loc: Loc
) -> list[FieldError]:
    out: list[FieldError] = []
    own_id, own_save = ids[index], save_as[index]
    if isinstance(own_id, str):
        if not NAME_PATTERN.match(own_id):
            out.append(FieldError((*loc, "id"), f"invalid step id {own_id!r}; {_NAME_RULE}"))
        elif own_id in ids[:index]:
            first = ids.index(own_id)
            out.append(
                FieldError(
                    (*loc, "id"),
                    f"duplicate step id {own_id!r} (step {first} has it too); "
                    "give every step a unique id",
                )
            )
    if isinstance(own_save, str):
        if not NAME_PATTERN.match(own_save):
            out.append(FieldError((*loc, "save_as"), f"invalid save_as {own_save!r}; {_NAME_RULE}"))
        else:
            others = [i for i in range(len(ids)) if i != index and own_save in (ids[i], save_as[i])]
            if others:
                out.append(
                    FieldError(
                        (*loc, "save_as"),
                        f"save_as {own_save!r} is also the id or save_as of step {others[0]}; "
                        "pick a name no other step uses",
                    )
                )
    return out


def _tool(
    uses: object, registry: ToolRegistry, loc: Loc, errors: list[FieldError]
) -> ToolSpec | None:
    if not isinstance(uses, str):
        return None
    try:
        return registry.require(uses)
    except UnknownTool as exc:
        errors.append(FieldError((*loc, "uses"), exc.message))
        return None


def _with_errors(
    with_: Mapping[str, Any],
    spec: ToolSpec | None,
    earlier: Sequence[str],
    has_event: bool,
    loc: Loc,
) -> list[FieldError]:
    deep = _too_deep(with_, MAX_WITH_DEPTH, loc)
    if deep is not None:
        return [
            FieldError(deep, f"'with' is nested more than {MAX_WITH_DEPTH} levels deep; flatten it")
        ]
    out: list[FieldError] = []
    templated: list[Loc] = []
    for rel, text in iter_strings(dict(with_)):
        if "${" not in text:
            continue
        try:
            template = parse_template(text)
        except TemplateError as exc:
            templated.append(rel)
            out.append(FieldError((*loc, *rel), exc.message))
            continue
        if template.refs:
            templated.append(rel)
        for ref in template.refs:
            out.extend(_ref_errors(ref, earlier, has_event, (*loc, *rel)))
    if spec is not None and spec.input_schema:
        out.extend(_schema_errors(with_, spec, templated, loc))
        told = {e.loc for e in out}
        for field in asset_fields(spec.input_schema, dict(with_)):
            bad = not is_templated(field.value) and field.asset_id() is None
            if bad and (*loc, *field.path) not in told:
                out.append(not_an_id(field, loc))
    return out


def asset_references(pipeline: Pipeline, registry: ToolRegistry) -> list[tuple[Loc, AssetField]]:
    """The asset ids a checked pipeline's steps give, written out, to inputs their tools
    mark `"format": "asset"`: each with the location of its step's `with`. An id a `${…}`
    lookup gives is checked when the step runs."""
    found: list[tuple[Loc, AssetField]] = []
    for index, step in enumerate(pipeline.steps):
        spec = registry.resolve(step.uses)
        if spec is None or not spec.input_schema:
            continue
        loc: Loc = ("payload", "pipeline", index, "with")
        for field in asset_fields(spec.input_schema, step.with_):
            if not is_templated(field.value):
                found.append((loc, field))
    return found


@functools.lru_cache(maxsize=1024)
def _validator(schema: str) -> Draft202012Validator | None:
    """A checked validator per distinct schema: building one costs far more than using it.

    A broken schema from an MCP server is not the caller's fault: None skips the check.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    parsed = json.loads(schema)
    try:
        Draft202012Validator.check_schema(parsed)
    except SchemaError:
        return None
    return Draft202012Validator(parsed, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _schema_errors(
    with_: Mapping[str, Any], spec: ToolSpec, templated: Sequence[Loc], loc: Loc
) -> list[FieldError]:
    if spec.kind == "remote":
        # A task type's schema, checked when it was stored; its patterns match in linear time.
        from pao.jsonschemas import validator as linear_validator

        validator: Draft202012Validator | None = linear_validator(spec.input_schema)
    else:
        validator = _validator(json.dumps(spec.input_schema, sort_keys=True))
    if validator is None:
        return []
    try:
        found = sorted(validator.iter_errors(dict(with_)), key=lambda e: list(e.absolute_path))
    except Exception:  # unresolvable $ref, unknown type and the like
        return []
    out: list[FieldError] = []
    for err in found:
        if _covers_template(err, templated):
            continue
        out.append(
            FieldError(
                (*loc, *err.absolute_path),
                f"{_schema_message(err)}; see the input schema of {spec.name!r} in GET /tools",
            )
        )
    return out


def _schema_message(err: SchemaValidationError) -> str:
    """jsonschema's text, minus the instance dump where a plainer sentence exists.

    A long value is shortened: an error must not echo back a payload's worth of input.
    """
    rule = err.validator_value
    if err.validator == "not" and isinstance(rule, dict) and isinstance(rule.get("required"), list):
        return "use only one of: " + ", ".join(str(r) for r in rule["required"])
    if err.validator == "maxLength" and isinstance(err.instance, str):
        message = f"{_shortened(err.instance)} is longer than {rule} characters"
    else:
        message = err.message
        if len(message) > _MAX_ECHO:
            message = message[: _MAX_ECHO // 2] + " … " + message[-_MAX_ECHO // 2 :]
    described = isinstance(err.schema, dict) and isinstance(err.schema.get("description"), str)
    if described and err.validator in {"type", "pattern", "format", "enum", "maxLength"}:
        assert isinstance(err.schema, dict)
        if err.validator == "pattern":
            return f"{_shortened(err.instance)} is not allowed here: {err.schema['description']}"
        return f"{message} ({err.schema['description']})"
    return message


def _shortened(value: object) -> str:
    """`value`'s repr, cut in the middle when long."""
    text = repr(value)
    if len(text) <= _MAX_ECHO:
        return text
    return f"{text[: _MAX_ECHO // 2]} … {text[-_MAX_ECHO // 2 :]} ({len(text)} characters)"


def _covers_template(err: SchemaValidationError, templated: Sequence[Loc]) -> bool:
    """True if the error is only about values a lookup will fill in at run time."""
    path = tuple(err.absolute_path)
    if any(path[: len(t)] == t for t in templated):
        return True
    leaves = list(_leaf_errors(err))
    return bool(err.context) and all(
        any(tuple(leaf.absolute_path)[: len(t)] == t for t in templated) for leaf in leaves
    )


def _leaf_errors(err: SchemaValidationError) -> Iterator[SchemaValidationError]:
    if not err.context:
        yield err
        return
    for sub in err.context:
        yield from _leaf_errors(sub)


def _guard_errors(text: str, earlier: Sequence[str], has_event: bool, loc: Loc) -> list[FieldError]:
    try:
        guard = parse_guard(text)
    except TemplateError as exc:
        return [FieldError(loc, exc.message)]
    out: list[FieldError] = []
    for ref in guard.references:
        out.extend(_ref_errors(ref, earlier, has_event, loc))
    return out


def _ref_errors(ref: Ref, earlier: Sequence[str], has_event: bool, loc: Loc) -> list[FieldError]:
    if ref.root == "event" and not has_event:
        return [
            FieldError(
                loc,
                f"{ref.text}: only event tasks have an event; use schedule_kind 'event' "
                "or remove the lookup",
            )
        ]
    if ref.root != "steps":
        return []
    listed = ", ".join(earlier) if earlier else "none (this is the first step)"
    if not ref.path:
        return [
            FieldError(
                loc,
                f"{ref.text}: name a step, e.g. ${{steps.<id>.<field>}}; earlier steps: {listed}",
            )
        ]
    name = ref.path[0]
    if name not in earlier:
        return [
            FieldError(
                loc,
                f"{ref.text}: step {str(name)!r} does not run before this one; a step can "
                f"only use results of earlier steps: {listed}",
            )
        ]
    return []


def _check_condition(
    payload: Mapping[str, Any], raw_steps: Sequence[Any], errors: list[FieldError]
) -> None:
    loc: Loc = ("payload", "condition")
    if not raw_steps:
        errors.append(
            FieldError(
                ("payload", "pipeline"),
                "a condition task needs at least one step: the check whose result "
                "payload.condition tests; steps after it run when the condition holds",
            )
        )
    text = payload.get("condition")
    if not isinstance(text, str):
        what = "required" if text is None else "must be a string"
        errors.append(
            FieldError(
                loc,
                f"condition {what} for condition tasks: a guard on the first step's result "
                "such as ${steps.check.ready} or ${steps.check.count} > 3",
            )
        )
        return
    first = raw_steps[0] if raw_steps and isinstance(raw_steps[0], Mapping) else {}
    names = [n for n in (first.get("id"), first.get("save_as")) if isinstance(n, str)]
    try:
        guard = parse_guard(text)
    except TemplateError as exc:
        errors.append(FieldError(loc, exc.message))
        return
    for ref in guard.references:
        if ref.root == "event":
            errors.append(
                FieldError(loc, f"{ref.text}: only event tasks have an event; remove the lookup")
            )
        elif ref.root == "steps" and (not ref.path or ref.path[0] not in names):
            wanted = " or ".join(f"${{steps.{n}…}}" for n in names) or "${steps.<first step id>…}"
            errors.append(
                FieldError(
                    loc,
                    f"{ref.text}: the condition is checked right after the first step, so it "
                    f"can only use that step's result: {wanted}",
                )
            )


def reject_bad_text(value: Any, loc: Loc) -> list[FieldError]:
    """Report NUL characters and lone surrogates, which Postgres text and JSON reject."""
    out: list[FieldError] = []
    # Iterative, in document order, so a deeply nested body cannot exhaust the stack.
    stack: list[tuple[Loc, Any, object]] = [(loc, value, None)]
    while stack:
        where, item, key = stack.pop()
        key_problem = _text_problem(key) if isinstance(key, str) else None
        if key_problem:
            out.append(FieldError(where, f"key {key_problem}"))
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                out.append(FieldError(where, f"text {problem}"))
        elif isinstance(item, Mapping):
            children = [((*where, _printable(k)), v, k) for k, v in item.items()]
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(((*where, i), v, None) for i, v in reversed(list(enumerate(item))))
    return out


def _text_problem(text: str) -> str | None:
    m = _BAD_TEXT.search(text)
    if m is None:
        return None
    if m.group() == "\x00":
        return "contains a NUL character (\\u0000); remove it"
    return (
        f"contains an unpaired surrogate (\\u{ord(m.group()):04x}); "
        "send valid Unicode, with surrogates only in pairs"
    )


def _printable(key: object) -> str:
    """A key safe to echo back in an error location."""
    text = str(key)
    return _BAD_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _too_deep(value: Any, limit: int, loc: Loc) -> Loc | None:
    """Where `value` first exceeds `limit` levels of nesting; iterative so depth can't crash it."""
    stack: list[tuple[Loc, Any, int]] = [(loc, value, 1)]
    while stack:
        where, item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: list[tuple[Loc, Any]] = [((*where, k), v) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            children = [((*where, i), v) for i, v in enumerate(item)]
        else:
            continue
        if depth > limit:
            return where
        stack.extend((w, v, depth + 1) for w, v in children)
    return None
