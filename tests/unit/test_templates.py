"""Lookups and guards: data access only, one pass, clear errors."""

from __future__ import annotations

from typing import Any

import pytest

from pao.errors import PaoError
from pao.templates import (
    Guard,
    JSONValue,
    Ref,
    TemplateError,
    json_equal,
    parse_guard,
    parse_path,
    parse_template,
    references,
    render,
    truthy,
)

CTX: dict[str, JSONValue] = {
    "steps": {
        "weather": {"summary": "sunny", "temp": 21.5, "tags": ["warm", "dry"], "ok": True},
        "check": {"count": 5, "status": "ready", "empty": [], "nothing": None},
        "a": {"x": 1, "list": [{"title": "first"}, {"title": "second"}]},
        "inject": {"text": "${steps.weather.summary}", "escaped": "$${x}"},
    },
    "event": {"type": "weather.checked", "payload": {"city": "Chisinau"}},
    "run": {"id": "r-1", "attempt": 2},
    "task": {"id": "t-1", "payload": {"chat": 42}},
}


# Parsing ----------------------------------------------------------------------


def test_template_error_is_a_pao_error() -> None:
    assert issubclass(TemplateError, PaoError)


def test_parse_splits_text_and_lookups() -> None:
    t = parse_template("Weather: ${steps.weather.summary} (${ run.id })")
    assert t.parts == (
        "Weather: ",
        Ref("steps", ("weather", "summary")),
        " (",
        Ref("run", ("id",)),
        ")",
    )
    assert not t.is_single_lookup


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("steps.a.list.0.title", Ref("steps", ("a", "list", 0, "title"))),
        ("steps.a.list[1].title", Ref("steps", ("a", "list", 1, "title"))),
        ("  event.payload.city  ", Ref("event", ("payload", "city"))),
        ("steps.my-step_2", Ref("steps", ("my-step_2",))),
        ("task", Ref("task", ())),
    ],
)
def test_parse_path_grammar(text: str, ref: Ref) -> None:
    assert parse_path(text) == ref


def test_ref_text_round_trips() -> None:
    assert Ref("steps", ("a", 0, "b")).text == "${steps.a.0.b}"


@pytest.mark.parametrize(
    "source",
    [
        "${__import__('os')}",
        "${steps.a.x + 1}",
        "${steps.a.f()}",
        "${steps.a['x']}",
        '${steps.a."x"}',
        "${steps.a[-1]}",
        "${steps.a[x]}",
        "${steps..a}",
        "${steps.a.}",
        "${steps.a.01}",
        "${ }",
        "${steps a}",
        "${(steps.a)}",
    ],
)
def test_anything_but_a_path_is_a_syntax_error(source: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(source)


def test_unknown_root_is_rejected_with_the_allowed_roots() -> None:
    with pytest.raises(TemplateError, match=r"unknown root 'env'.*steps, event, run, task"):
        parse_template("${env.HOME}")
    with pytest.raises(TemplateError, match="unknown root '__import__'"):
        parse_template("${__import__}")


def test_unclosed_lookup_says_how_to_escape() -> None:
    with pytest.raises(TemplateError, match=r"unclosed \$\{.*\$\$\{"):
        parse_template("price: ${steps.a.x")


def test_references_walks_values_not_keys() -> None:
    value: JSONValue = {
        "${steps.ignored}": "plain",
        "a": ["${steps.a.x}", {"b": "x ${event.type} y ${run.id}"}],
        "n": 3,
        "escaped": "$${steps.nope}",
    }
    assert references(value) == [
        Ref("steps", ("a", "x")),
        Ref("event", ("type",)),
        Ref("run", ("id",)),
    ]


# Rendering --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("${steps.check.count}", 5),
        ("${steps.weather.temp}", 21.5),
        ("${steps.weather.ok}", True),
        ("${steps.check.nothing}", None),
        ("${steps.weather.tags}", ["warm", "dry"]),
        ("${event.payload}", {"city": "Chisinau"}),
        ("${ steps.a.list[1].title }", "second"),
    ],
)
def test_single_lookup_keeps_the_json_type(source: str, expected: Any) -> None:
    assert render(source, CTX) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("It is ${steps.weather.summary}.", "It is sunny."),
        ("count=${steps.check.count}", "count=5"),
        ("t=${steps.weather.temp} ok=${steps.weather.ok}", "t=21.5 ok=true"),
        ("n=${steps.check.nothing}", "n=null"),
        ("tags=${steps.weather.tags}", 'tags=["warm","dry"]'),
        ("e=${event.payload}", 'e={"city":"Chisinau"}'),
        (" ${steps.check.count}", " 5"),
        ("${steps.check.count}${steps.check.count}", "55"),
    ],
)
def test_lookup_inside_text_is_inserted_as_text(source: str, expected: str) -> None:
    assert render(source, CTX) == expected


def test_dollar_dollar_brace_is_a_literal() -> None:
    assert render("cost $${steps.a.x} and $5 and $$", CTX) == "cost ${steps.a.x} and $5 and $$"
    assert render("$${x} is ${steps.a.x}", CTX) == "${x} is 1"


def test_render_is_one_pass() -> None:
    # The substituted value contains a lookup; it must come out verbatim.
    assert render("${steps.inject.text}", CTX) == "${steps.weather.summary}"
    assert render("got ${steps.inject.text}", CTX) == "got ${steps.weather.summary}"
    assert render("${steps.inject.escaped}", CTX) == "$${x}"
    assert render("${steps.inject}", CTX) == {
        "text": "${steps.weather.summary}",
        "escaped": "$${x}",
    }


def test_render_walks_structures_and_leaves_keys_alone() -> None:
    value: JSONValue = {
        "${steps.a.x}": ["${steps.a.x}", 7, None, {"t": "v=${run.attempt}"}],
        "flag": False,
    }
    assert render(value, CTX) == {"${steps.a.x}": [1, 7, None, {"t": "v=2"}], "flag": False}


def test_rendered_values_are_copies() -> None:
    out = render("${steps.weather.tags}", CTX)
    assert isinstance(out, list)
    out.append("mutated")
    assert CTX["steps"]["weather"]["tags"] == ["warm", "dry"]  # type: ignore[call-overload,index]


def test_unknown_key_names_the_path_and_what_exists() -> None:
    with pytest.raises(TemplateError) as exc:
        render("${steps.weather.summry}", CTX)
    message = exc.value.message
    assert "${steps.weather.summry}" in message
    assert "'steps.weather' has no key 'summry'" in message
    assert "ok, summary, tags, temp" in message


def test_unknown_step_lists_the_steps() -> None:
    with pytest.raises(TemplateError, match=r"'steps' has no key 'nope'; it has: a, check"):
        render("hello ${steps.nope.x}", CTX)


def test_missing_value_is_never_an_empty_string() -> None:
    with pytest.raises(TemplateError):
        render("before ${steps.a.missing} after", CTX)


def test_index_errors() -> None:
    with pytest.raises(TemplateError, match="list of 2 items; index 5 is out of range"):
        render("${steps.a.list.5}", CTX)
    with pytest.raises(TemplateError, match="is a list of 2 items, not an object"):
        render("${steps.a.list.title}", CTX)
    with pytest.raises(TemplateError, match=r"'steps\.a\.x' is a number, which has no 'y'"):
        render("${steps.a.x.y}", CTX)


def test_digit_segment_on_an_object_is_a_key() -> None:
    ctx: dict[str, JSONValue] = {"steps": {"a": {"0": "zero"}}}
    assert render("${steps.a.0}", ctx) == "zero"


def test_missing_root_says_what_is_available() -> None:
    ctx: dict[str, JSONValue] = {"steps": {}, "run": {}, "task": {}}
    with pytest.raises(TemplateError, match=r"'event' is not available here .*run, steps, task"):
        render("${event.type}", ctx)


def test_dunder_segments_are_dict_lookups_not_attribute_access() -> None:
    with pytest.raises(TemplateError, match=r"'steps\.a' has no key '__class__'"):
        render("${steps.a.__class__}", CTX)
    with pytest.raises(TemplateError, match="is a list of 2 items, not an object"):
        render("${steps.a.list.__len__}", CTX)
    with pytest.raises(TemplateError, match="a string, which has no 'upper'"):
        render("${steps.weather.summary.upper}", CTX)


def test_code_is_never_evaluated() -> None:
    with pytest.raises(TemplateError):
        render("${__import__('os').system('true')}", CTX)
    with pytest.raises(TemplateError, match="unknown root 'env'"):
        render("${env.HOME}", CTX)


def test_non_json_objects_in_the_context_are_not_exposed() -> None:
    ctx: dict[str, Any] = {"steps": {"a": object()}}
    with pytest.raises(TemplateError, match="not JSON data"):
        render("${steps.a}", ctx)


def test_non_strings_render_unchanged() -> None:
    for value in (None, True, 3, 2.5):
        assert render(value, CTX) == value


# Guards -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (False, False),
        (0, False),
        (0.0, False),
        ("", False),
        ([], False),
        ({}, False),
        (True, True),
        (1, True),
        (-0.5, True),
        ("0", True),
        ("false", True),
        ([0], True),
        ({"a": None}, True),
    ],
)
def test_truthiness(value: JSONValue, expected: bool) -> None:
    assert truthy(value) is expected
    ctx: dict[str, JSONValue] = {"steps": {"a": {"v": value}}}
    assert parse_guard("${steps.a.v}").evaluate(ctx) is expected
    assert parse_guard("not ${steps.a.v}").evaluate(ctx) is not expected
    assert parse_guard("!${steps.a.v}").evaluate(ctx) is not expected


@pytest.mark.parametrize(
    ("guard", "expected"),
    [
        ("${steps.check.count} == 5", True),
        ("${steps.check.count} == 5.0", True),
        ("${steps.check.count} != 5", False),
        ("${steps.check.count} > 3", True),
        ("${steps.check.count} > 5", False),
        ("${steps.check.count} >= 5", True),
        ("${steps.check.count} < 5", False),
        ("${steps.check.count} <= 5", True),
        ("${steps.check.count} < 10.5", True),
        ("${steps.check.count}>3", True),
        ('${steps.check.status} == "ready"', True),
        ('${steps.check.status} != "ready"', False),
        ('${steps.check.status} > "abc"', True),
        ('${steps.check.status} <= "re"', False),
        ("${steps.check.nothing} == null", True),
        ("${steps.weather.ok} == true", True),
        ("${steps.weather.ok} == 1", False),
        ("${steps.check.count} == true", False),
        ('${steps.check.count} == "5"', False),
        ("${steps.check.empty} == null", False),
        ('  ${event.payload.city} == "Chisinau"  ', True),
    ],
)
def test_guard_comparisons(guard: str, expected: bool) -> None:
    assert parse_guard(guard).evaluate(CTX) is expected


def test_guard_structure_and_references() -> None:
    g = parse_guard("${steps.check.count} >= -2.5e1")
    assert g == Guard(
        "${steps.check.count} >= -2.5e1", Ref("steps", ("check", "count")), ">=", -25.0
    )
    assert g.references == [Ref("steps", ("check", "count"))]


@pytest.mark.parametrize(
    "guard",
    [
        '${steps.check.count} > "3"',
        "${steps.check.status} > 3",
        "${steps.check.nothing} < 1",
        "${steps.weather.ok} >= 0",
        "${steps.weather.tags} > 1",
    ],
)
def test_ordering_needs_two_numbers_or_two_strings(guard: str) -> None:
    with pytest.raises(TemplateError, match="compares two numbers or two strings"):
        parse_guard(guard).evaluate(CTX)


def test_guard_on_unknown_path_raises() -> None:
    with pytest.raises(TemplateError, match="has no key 'missing'"):
        parse_guard("${steps.check.missing} > 1").evaluate(CTX)


@pytest.mark.parametrize(
    ("guard", "hint"),
    [
        ("", "empty guard"),
        ("steps.check.count > 3", "must start with a"),
        ("3 < ${steps.check.count}", "must start with a"),
        ("${steps.check.count", "unclosed"),
        ("${steps.check.count} = 3", "expected an operator"),
        ("${steps.check.count} > ", "missing value"),
        ("${steps.check.count} > three", "not a valid value"),
        ("${steps.check.count} > 'x'", "not a valid value"),
        ("${steps.check.count} == [1]", "not a valid value"),
        ('${steps.check.count} == {"a": 1}', "not a valid value"),
        ("${steps.check.count} > NaN", "not a valid value"),
        ("${steps.check.count} > 3 and 4", "not a valid value"),
        ("${steps.check.count} > ${steps.a.x}", "comparing two lookups"),
        ("not ${steps.check.count} > 3", "opposite operator"),
        ("${os.system}", "unknown root"),
        ("${steps.a.f()}", "invalid lookup"),
    ],
)
def test_guard_syntax_errors(guard: str, hint: str) -> None:
    with pytest.raises(TemplateError, match=hint):
        parse_guard(guard)


def test_json_equal_is_strict_about_booleans() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert json_equal([1, {"a": True}], [1.0, {"a": True}])
    assert not json_equal([1, {"a": True}], [1, {"a": 1}])
    assert not json_equal("1", 1)
