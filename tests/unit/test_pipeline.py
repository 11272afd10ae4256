"""Payload validation at task creation: every error, at its exact location."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pao.errors import FieldError, InvalidInput
from pao.pipeline import (
    MAX_PAYLOAD_BYTES,
    Pipeline,
    Step,
    load_pipeline,
    reject_bad_text,
    validate_payload,
)
from pao.tools import McpServerConfig, ToolRegistry, ToolSpec

SEED: dict[str, Any] = {
    "pipeline": [
        {
            "id": "weather",
            "uses": "weather-mcp.forecast",
            "with": {"city": "Chisinau"},
            "save_as": "weather",
        },
        {
            "id": "notify",
            "uses": "telegram-mcp.send_message",
            "with": {"chat_id": 12345, "text": "${steps.weather.summary}"},
        },
    ]
}


def registry() -> ToolRegistry:
    return ToolRegistry(
        {
            "weather-mcp": McpServerConfig(command=["python", "-m", "weather"]),
            "telegram-mcp": McpServerConfig(url="http://127.0.0.1:9000/mcp"),
        }
    )


def errors_of(
    payload: Any, kind: str = "cron", reg: ToolRegistry | None = None
) -> list[FieldError]:
    with pytest.raises(InvalidInput) as exc:
        validate_payload(payload, reg or registry(), schedule_kind=kind)
    return exc.value.errors


def locs(payload: Any, kind: str = "cron") -> list[tuple[str | int, ...]]:
    return [e.loc for e in errors_of(payload, kind)]


def one_error(payload: Any, kind: str = "cron") -> FieldError:
    found = errors_of(payload, kind)
    assert len(found) == 1, found
    return found[0]


def step(name: str, uses: str = "log", /, **extra: Any) -> dict[str, Any]:
    """A step dict; `with`/`if` go in via ``**{...}`` since they are keywords."""
    out: dict[str, Any] = {"id": name, "uses": uses}
    if uses == "log" and "with" not in extra:
        out["with"] = {"message": "hi"}
    out.update(extra)
    return out


P = ("payload", "pipeline")


# Happy paths ------------------------------------------------------------------


def test_seed_example() -> None:
    pipeline = validate_payload(copy.deepcopy(SEED), registry(), schedule_kind="cron")
    assert isinstance(pipeline, Pipeline)
    assert [s.id for s in pipeline.steps] == ["weather", "notify"]
    first, second = pipeline.steps
    assert first.uses == "weather-mcp.forecast"
    assert first.with_ == {"city": "Chisinau"}
    assert first.result_name == "weather"
    assert second.with_["text"] == "${steps.weather.summary}"
    assert second.if_ is None
    assert second.timeout_seconds is None
    assert pipeline.condition is None
    dumped = second.model_dump(by_alias=True)
    assert dumped["with"] == {"chat_id": 12345, "text": "${steps.weather.summary}"}
    assert "if" in dumped


def test_no_pipeline_is_an_empty_pipeline() -> None:
    assert validate_payload({}, registry(), schedule_kind="once").steps == []
    other = {"note": "free data", "nested": {"a": [1, 2]}}
    assert validate_payload(other, registry(), schedule_kind="interval").steps == []


def test_all_step_fields() -> None:
    payload = {
        "pipeline": [
            step("fetch", "http.request", **{"with": {"url": "https://x.y/a"}}),
            step(
                "pause",
                "sleep",
                save_as="paused",
                timeout_seconds=3600,
                **{"with": {"seconds": 1}, "if": "${steps.fetch.status} == 200"},
            ),
        ]
    }
    result = validate_payload(payload, registry(), schedule_kind="cron")
    assert result.steps[1].if_ == "${steps.fetch.status} == 200"
    assert result.steps[1].result_name == "paused"
    assert result.steps[1].timeout_seconds == 3600


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (SEED, "cron"),
        ({}, "once"),
        (
            {
                "pipeline": [
                    step("check", "http.request", **{"with": {"url": "https://x.y/"}}),
                    step("say", save_as="said", timeout_seconds=9, **{"if": "${steps.check}"}),
                ],
                "condition": "${steps.check.status} == 200",
            },
            "condition",
        ),
    ],
)
def test_a_stored_payload_loads_as_it_was_validated(payload: dict[str, Any], kind: str) -> None:
    assert load_pipeline(payload) == validate_payload(payload, registry(), schedule_kind=kind)


def test_an_unreadable_stored_pipeline_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="stored pipeline is unreadable"):
        load_pipeline({"pipeline": [{"id": "x"}]})


def test_step_model_accepts_field_names_and_aliases() -> None:
    assert Step(id="a", uses="log", with_={"message": "x"}, if_="${run.id}").with_ == {
        "message": "x"
    }
    assert Step.model_validate({"id": "a", "uses": "log", "if": "${run.id}"}).if_ == "${run.id}"


def test_later_steps_may_use_save_as_or_id() -> None:
    payload = {
        "pipeline": [
            step("a", save_as="first"),
            step("b", **{"with": {"message": "${steps.first.x} ${steps.a.y}"}}),
        ]
    }
    validate_payload(payload, registry(), schedule_kind="cron")


def test_task_and_run_lookups_are_allowed_everywhere() -> None:
    payload = {
        "chat": 7,
        "pipeline": [step("a", **{"with": {"message": "${task.payload.chat} ${run.id}"}})],
    }
    validate_payload(payload, registry(), schedule_kind="cron")


def test_event_lookups_in_event_tasks() -> None:
    payload = {
        "pipeline": [
            step(
                "a",
                "events.publish",
                **{
                    "with": {"type": "${event.type}", "payload": "${event.payload}"},
                    "if": '${event.payload.city} == "Chisinau"',
                },
            )
        ]
    }
    validate_payload(payload, registry(), schedule_kind="event")


# Pipeline shape ---------------------------------------------------------------


@pytest.mark.parametrize("value", [{}, "steps", 3, None])
def test_pipeline_must_be_a_list(value: Any) -> None:
    err = one_error({"pipeline": value})
    assert err.loc == P
    assert "must be a list of steps" in err.message


def test_payload_must_be_an_object() -> None:
    assert one_error([1]).loc == ("payload",)


def test_at_most_50_steps() -> None:
    ok = {"pipeline": [step(f"s{i}") for i in range(50)]}
    validate_payload(ok, registry(), schedule_kind="cron")
    err = one_error({"pipeline": [step(f"s{i}") for i in range(51)]})
    assert err.loc == P
    assert "51 steps; at most 50" in err.message


@pytest.mark.parametrize("value", ["x", 1, None, ["id"]])
def test_step_must_be_an_object(value: Any) -> None:
    err = one_error({"pipeline": [step("a"), value]})
    assert err.loc == (*P, 1)
    assert '"id" and "uses"' in err.message


def test_missing_and_unknown_step_fields() -> None:
    found = errors_of({"pipeline": [{"with": {}, "save-as": "x", "args": {}}]})
    by_loc = {e.loc: e.message for e in found}
    assert set(by_loc) == {
        (*P, 0, "id"),
        (*P, 0, "uses"),
        (*P, 0, "save-as"),
        (*P, 0, "args"),
    }
    assert "every step needs 'id'" in by_loc[(*P, 0, "id")]
    assert by_loc[(*P, 0, "args")].startswith("unknown field 'args'; a step has only: id, uses")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 5),
        ("uses", ["log"]),
        ("with", "message=hi"),
        ("with", None),
        ("save_as", 1),
        ("if", True),
        ("timeout_seconds", 0),
        ("timeout_seconds", 3601),
        ("timeout_seconds", "10"),
        ("timeout_seconds", 1.5),
    ],
)
def test_field_types(field: str, value: Any) -> None:
    s = step("a")
    s[field] = value
    assert (*P, 0, field) in locs({"pipeline": [s]})


# Names ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["1st", "", "a b", "a.b", "x" * 65, "é", "-a"])
def test_invalid_ids(bad: str) -> None:
    err = one_error({"pipeline": [step(bad)]})
    assert err.loc == (*P, 0, "id")
    assert "invalid step id" in err.message


@pytest.mark.parametrize("good", ["a", "_x", "A-b_9", "x" * 64])
def test_valid_ids(good: str) -> None:
    validate_payload({"pipeline": [step(good)]}, registry(), schedule_kind="cron")


def test_duplicate_ids_are_reported_on_the_later_step() -> None:
    err = one_error({"pipeline": [step("a"), step("b"), step("a")]})
    assert err.loc == (*P, 2, "id")
    assert "duplicate step id 'a' (step 0" in err.message


def test_invalid_save_as() -> None:
    err = one_error({"pipeline": [step("a", save_as="has space")]})
    assert err.loc == (*P, 0, "save_as")


def test_save_as_same_as_own_id_is_fine() -> None:
    validate_payload({"pipeline": [step("a", save_as="a")]}, registry(), schedule_kind="cron")


def test_save_as_collisions() -> None:
    # Collides with a later step's id, and two steps share a save_as.
    payload = {
        "pipeline": [
            step("a", save_as="b"),
            step("b"),
            step("c", save_as="r"),
            step("d", save_as="r"),
        ]
    }
    found = errors_of(payload)
    assert [e.loc for e in found] == [
        (*P, 0, "save_as"),
        (*P, 2, "save_as"),
        (*P, 3, "save_as"),
    ]
    assert "also the id or save_as of step 1" in found[0].message


# Tools ------------------------------------------------------------------------


def test_undeclared_server() -> None:
    err = one_error({"pipeline": [step("a", "slack-mcp.post")]})
    assert err.loc == (*P, 0, "uses")
    assert err.message.startswith("MCP server 'slack-mcp' is not declared in PAO_TOOLS_FILE")


def test_unknown_builtin() -> None:
    err = one_error({"pipeline": [step("a", "http.get")]})
    assert err.loc == (*P, 0, "uses")


def test_declared_but_undiscovered_server_accepts_any_arguments() -> None:
    payload = {"pipeline": [step("a", "weather-mcp.whatever", **{"with": {"x": [1, {"y": 2}]}})]}
    validate_payload(payload, registry(), schedule_kind="cron")


def test_discovered_server_tools_are_schema_checked() -> None:
    reg = registry()
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    }
    reg.add_server_tools("weather-mcp", [ToolSpec("forecast", "Forecast.", schema)])
    validate_payload(copy.deepcopy(SEED), reg, schedule_kind="cron")
    bad = {"pipeline": [step("w", "weather-mcp.forecast", **{"with": {"days": "x"}})]}
    found = errors_of(bad, reg=reg)
    assert [e.loc for e in found] == [(*P, 0, "with"), (*P, 0, "with", "days")]
    unknown = {"pipeline": [step("w", "weather-mcp.nope")]}
    assert [e.loc for e in errors_of(unknown, reg=reg)] == [(*P, 0, "uses")]


@pytest.mark.parametrize("schema", [{"type": "nonsense"}, {"$ref": "#/$defs/missing"}])
def test_broken_schema_from_a_server_is_not_the_callers_fault(schema: dict[str, Any]) -> None:
    reg = registry()
    reg.add_server_tools("weather-mcp", [ToolSpec("f", "F.", schema)])
    payload = {"pipeline": [step("w", "weather-mcp.f", **{"with": {"a": 1}})]}
    validate_payload(payload, reg, schedule_kind="cron")


# Arguments against the schema ---------------------------------------------------


def test_sleep_seconds_must_be_a_number() -> None:
    err = one_error({"pipeline": [step("a", "sleep", **{"with": {"seconds": "ten"}})]})
    assert err.loc == ("payload", "pipeline", 0, "with", "seconds")
    assert "'ten' is not of type 'number'" in err.message
    assert "GET /tools" in err.message


def test_templated_values_skip_type_checks() -> None:
    payload = {
        "pipeline": [
            step("a"),
            step("b", "sleep", **{"with": {"seconds": "${steps.a.n}"}}),
        ]
    }
    validate_payload(payload, registry(), schedule_kind="cron")


def test_templated_values_skip_format_pattern_and_object_checks() -> None:
    payload = {
        "pipeline": [
            step("a"),
            step(
                "b",
                "http.request",
                **{
                    "with": {
                        "url": "${steps.a.url}",
                        "method": "${steps.a.method}",
                        "headers": "${steps.a.headers}",
                        "timeout_seconds": "${task.payload.t}",
                    }
                },
            ),
            step("c", "http.request", **{"with": {"url": "https://x.y/${steps.a.id}"}}),
            step("d", "events.publish", **{"with": {"type": "t", "payload": "${steps.a}"}}),
        ]
    }
    validate_payload(payload, registry(), schedule_kind="cron")


def test_other_schema_errors_still_apply_around_templates() -> None:
    payload = {
        "pipeline": [
            step("a"),
            step(
                "b",
                "http.request",
                **{"with": {"method": "${steps.a.m}", "headers": {"A": 1}, "bogus": "${run.id}"}},
            ),
        ]
    }
    found = errors_of(payload)
    assert [e.loc for e in found] == [
        (*P, 1, "with"),
        (*P, 1, "with"),
        (*P, 1, "with", "headers", "A"),
    ]
    messages = " ".join(e.message for e in found)
    assert "'url' is a required property" in messages
    assert "'bogus' was unexpected" in messages


def test_escaped_dollar_is_not_a_template_and_is_type_checked() -> None:
    err = one_error({"pipeline": [step("a", "sleep", **{"with": {"seconds": "$${x}"}})]})
    assert err.loc == (*P, 0, "with", "seconds")


def test_http_json_and_body_are_exclusive() -> None:
    payload = {
        "pipeline": [
            step("a", "http.request", **{"with": {"url": "https://x.y", "json": {}, "body": ""}})
        ]
    }
    err = one_error(payload)
    assert err.loc == (*P, 0, "with")
    assert "use only one of: json, body" in err.message


def test_http_url_scheme() -> None:
    err = one_error({"pipeline": [step("a", "http.request", **{"with": {"url": "file:///x"}})]})
    assert err.loc == (*P, 0, "with", "url")
    assert "http:// or https://" in err.message


# Lookups ----------------------------------------------------------------------


def test_lookup_of_later_step() -> None:
    payload = {
        "pipeline": [
            step("a", **{"with": {"message": "${steps.b.x}"}}),
            step("b"),
        ]
    }
    err = one_error(payload)
    assert err.loc == (*P, 0, "with", "message")
    assert "step 'b' does not run before this one" in err.message
    assert "none (this is the first step)" in err.message


def test_lookup_of_unknown_step_lists_earlier_steps() -> None:
    payload = {
        "pipeline": [
            step("a", save_as="x"),
            step("b"),
            step("c", **{"with": {"message": "hi", "nested": ["${steps.zzz}"]}}),
        ]
    }
    found = errors_of(payload)
    assert (*P, 2, "with", "nested", 0) in [e.loc for e in found]
    msg = next(e.message for e in found if e.loc == (*P, 2, "with", "nested", 0))
    assert "step 'zzz'" in msg
    assert "earlier steps: a, x, b" in msg


def test_step_cannot_use_itself() -> None:
    err = one_error({"pipeline": [step("a", **{"if": "${steps.a.ok}"})]})
    assert err.loc == (*P, 0, "if")


def test_bare_steps_lookup() -> None:
    err = one_error({"pipeline": [step("a"), step("b", **{"with": {"message": "${steps}"}})]})
    assert err.loc == (*P, 1, "with", "message")
    assert "name a step" in err.message


@pytest.mark.parametrize("kind", ["cron", "once", "interval", "condition"])
def test_event_lookup_outside_event_tasks(kind: str) -> None:
    payload: dict[str, Any] = {
        "pipeline": [step("a"), step("b", **{"with": {"message": "${event.type}"}})],
    }
    if kind == "condition":
        payload["condition"] = "${steps.a.ok}"
    err = one_error(payload, kind)
    assert err.loc == (*P, 1, "with", "message")
    assert "only event tasks have an event" in err.message


def test_event_lookup_in_if_outside_event_tasks() -> None:
    err = one_error({"pipeline": [step("a", **{"if": "${event.payload.x} > 1"})]})
    assert err.loc == (*P, 0, "if")


@pytest.mark.parametrize(
    "text",
    ["${__import__('os')}", "${env.HOME}", "x ${steps.a.b", "${steps.a[-1]}", "${}"],
)
def test_template_syntax_errors_at_their_loc(text: str) -> None:
    payload = {"pipeline": [step("a"), step("b", **{"with": {"message": {"deep": [text]}}})]}
    found = errors_of(payload)
    # The syntax error is reported once at the string; no schema noise for it.
    assert [e.loc for e in found if e.loc[-1] == 0] == [(*P, 1, "with", "message", "deep", 0)]


@pytest.mark.parametrize(
    "guard", ["${steps.a.x} >", "steps.a.x", "${steps.a.x} ~= 1", "${steps.a.x} == ${run.id}"]
)
def test_guard_syntax_errors(guard: str) -> None:
    err = one_error({"pipeline": [step("a"), step("b", **{"if": guard})]})
    assert err.loc == (*P, 1, "if")


# Condition tasks --------------------------------------------------------------


def test_condition_task() -> None:
    payload = {
        "condition": "${steps.check.count} > 3",
        "pipeline": [
            step("check", "http.request", **{"with": {"url": "https://x.y/count"}}),
            step("act", **{"with": {"message": "count is ${steps.check.count}"}}),
        ],
    }
    result = validate_payload(payload, registry(), schedule_kind="condition")
    assert result.condition == "${steps.check.count} > 3"
    payload["condition"] = "not ${steps.c2.json.ready}"
    payload["pipeline"][0]["save_as"] = "c2"  # type: ignore[index]
    validate_payload(payload, registry(), schedule_kind="condition")


def test_condition_task_needs_a_check_step() -> None:
    found = errors_of({"condition": "${steps.check.ok}"}, "condition")
    assert [e.loc for e in found] == [P, ("payload", "condition")]
    assert "at least one step" in found[0].message


@pytest.mark.parametrize(("value", "word"), [(None, "required"), (3, "must be a string")])
def test_condition_must_be_a_string(value: Any, word: str) -> None:
    payload: dict[str, Any] = {"pipeline": [step("check")]}
    if value is not None:
        payload["condition"] = value
    err = one_error(payload, "condition")
    assert err.loc == ("payload", "condition")
    assert word in err.message


def test_condition_may_only_use_the_first_step() -> None:
    payload = {
        "condition": "${steps.second.ok}",
        "pipeline": [step("check"), step("second")],
    }
    err = one_error(payload, "condition")
    assert err.loc == ("payload", "condition")
    assert "${steps.check…}" in err.message


@pytest.mark.parametrize(
    ("condition", "hint"),
    [
        ("${steps.check.n} >", "missing value"),
        ("${event.type}", "only event tasks"),
        ("${steps}", "first step"),
        ("", "empty guard"),
    ],
)
def test_condition_errors(condition: str, hint: str) -> None:
    err = one_error({"condition": condition, "pipeline": [step("check")]}, "condition")
    assert err.loc == ("payload", "condition")
    assert hint in err.message


def test_condition_key_on_other_kinds() -> None:
    err = one_error({"condition": "${steps.a.ok}", "pipeline": [step("a")]}, "cron")
    assert err.loc == ("payload", "condition")
    assert "only condition tasks have a condition" in err.message


# Limits -----------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


def test_with_depth_cap() -> None:
    # The `with` object itself is level 1.
    ok = {"pipeline": [step("a", "weather-mcp.x", **{"with": nested(32)})]}
    validate_payload(ok, registry(), schedule_kind="cron")
    bad = {"pipeline": [step("a", "weather-mcp.x", **{"with": nested(33)})]}
    err = one_error(bad)
    assert err.loc[:5] == (*P, 0, "with", "n")
    assert "nested more than 32 levels" in err.message


def test_payload_depth_cap_survives_absurd_nesting() -> None:
    err = one_error({"data": nested(100_000)})
    assert err.loc[:2] == ("payload", "data")
    assert "nested more than" in err.message


def test_payload_size_cap() -> None:
    ok = {"blob": "x" * (MAX_PAYLOAD_BYTES - 20)}
    validate_payload(ok, registry(), schedule_kind="cron")
    err = one_error({"blob": "é" * MAX_PAYLOAD_BYTES})
    assert err.loc == ("payload",)
    assert f"at most {MAX_PAYLOAD_BYTES}" in err.message


# Collecting everything --------------------------------------------------------


def test_all_errors_are_collected() -> None:
    payload = {
        "condition": "${steps.a.x}",
        "pipeline": [
            {"id": "1a", "uses": "nope.tool", "extra": True},
            step("b", "sleep", **{"with": {"seconds": "ten"}, "if": "${steps.zz}"}),
            step("b", "log", **{"with": {"message": "${event.type}"}}),
        ],
    }
    assert locs(payload) == [
        (*P, 0, "extra"),
        (*P, 0, "id"),
        (*P, 0, "uses"),
        (*P, 1, "with", "seconds"),
        (*P, 1, "if"),
        (*P, 2, "id"),
        (*P, 2, "with", "message"),
        ("payload", "condition"),
    ]


# Text check -------------------------------------------------------------------


def test_reject_bad_text() -> None:
    body = {
        "title": "ok",
        "bad": "a\x00b",
        "list": ["fine", "\ud800 lone"],
        "k\x00ey": 1,
        "pair": "\U0001f600",
        "nested": {"\udfff": "x"},
        "n": [1, None, True],
    }
    found = reject_bad_text(body, ("body",))
    assert [(e.loc, e.message.split(" (")[0]) for e in found] == [
        (("body", "bad"), "text contains a NUL character"),
        (("body", "list", 1), "text contains an unpaired surrogate"),
        (("body", "k\\u0000ey"), "key contains a NUL character"),
        (("body", "nested", "\\udfff"), "key contains an unpaired surrogate"),
    ]
    assert "\\ud800" in found[1].message


def test_reject_bad_text_clean_values() -> None:
    assert reject_bad_text({"a": ["b", {"c": "d"}], "e": 1.5}, ()) == []
    assert reject_bad_text("plain", ("x",)) == []
    assert reject_bad_text("\x00", ("x",))[0].loc == ("x",)
