"""The CLI's rendering and parsing, the client's problem reading, the MCP tools' schemas."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import jsonschema
import pytest

from pao.cli_client import UsageError, add_commands, duration, table, task_type_update_body, when
from pao.client import ApiProblem
from pao.mcp_server import TOOLS, explain
from tests.helpers import SEED_TASK


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1D", 86_400)]
)
def test_durations(text: str, seconds: int) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1.5h", "-3", "1w", "soon"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"e\.g\. 90s, 15m, 2h, 1d"):
        duration(text)


def test_tables_pad_columns_and_say_when_empty() -> None:
    assert table(("A", "LONGER"), [["xyz", "1"], ["p", "22"]], empty="-") == (
        "A    LONGER\nxyz  1\np    22"
    )
    assert table(("A",), [], empty="(no tasks)") == "(no tasks)"


def test_times_are_shown_in_utc() -> None:
    assert when("2026-03-08T03:30:00-04:00") == "2026-03-08 07:30:00Z"
    assert when(None) == "-"


def _response(status: int, body: bytes, content_type: str) -> httpx.Response:
    request = httpx.Request("POST", "http://api.test/tasks")
    return httpx.Response(
        status, content=body, headers={"content-type": content_type}, request=request
    )


def test_a_problem_response_becomes_one_error_with_its_fields() -> None:
    body = (
        b'{"type": "urn:pao:problem:validation", "title": "Invalid request", "status": 422,'
        b' "detail": "bad", "request_id": "r1",'
        b' "errors": [{"field": "schedule_expr", "message": "out of range"}]}'
    )
    problem = ApiProblem.of(_response(422, body, "application/problem+json"))
    assert (problem.status, problem.title, problem.detail) == (422, "Invalid request", "bad")
    assert problem.type == "urn:pao:problem:validation"
    assert problem.lines() == [
        "Invalid request (422): bad",
        "  schedule_expr: out of range",
        "  request_id: r1",
    ]
    assert explain(problem).splitlines() == [
        "Invalid request (422): bad",
        "- schedule_expr: out of range",
        "Fix the fields named and call again; nothing was stored.",
    ]


def test_a_response_that_is_not_a_problem_keeps_its_text() -> None:
    problem = ApiProblem.of(_response(502, b"<h1>upstream down</h1>", "text/html"))
    assert (problem.status, problem.title, problem.detail) == (
        502,
        "Bad Gateway",
        "<h1>upstream down</h1>",
    )


def test_every_tool_has_a_valid_described_input_schema() -> None:
    for tool in TOOLS:
        schema = tool.input_schema
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False, tool.name
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
        description = tool.tool().description or ""
        assert f"Needs the '{tool.scope}' scope." in description


def test_the_create_task_schema_is_the_api_s() -> None:
    [create] = [t for t in TOOLS if t.name == "create_task"]
    validator = jsonschema.Draft202012Validator(create.input_schema)
    assert not list(validator.iter_errors({**SEED_TASK, "idempotency_key": "k1"}))
    assert list(validator.iter_errors({**SEED_TASK, "owner": "x"}))
    assert list(validator.iter_errors({**SEED_TASK, "priority": 10}))


def _update_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_commands(sub)
    return parser.parse_args(["task-types", "update", "media.transcode", *argv])


def test_task_types_update_changes_only_what_is_given() -> None:
    current = {
        "name": "media.transcode",
        "description": "old",
        "parameters_schema": {"type": "object"},
        "output_schema": None,
        "metadata": {"team": "video"},
        "lease_seconds": 60,
        "cost_per_call": "0.5",
        "is_active": False,
        "version": 3,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    args = _update_args(
        "--lease-seconds", "90", "--active", "--output-schema", '{"type": "object"}'
    )
    assert task_type_update_body(current, args) == {
        "description": "old",
        "parameters_schema": {"type": "object"},
        "output_schema": {"type": "object"},
        "metadata": {"team": "video"},
        "lease_seconds": 90,
        "cost_per_call": "0.5",
        "is_active": True,
    }
    body = task_type_update_body(current, _update_args("--no-active"))
    assert body["is_active"] is False
    assert body["lease_seconds"] == 60


def test_task_types_update_from_a_file_replaces_all(tmp_path: Path) -> None:
    path = tmp_path / "type.json"
    path.write_text('{"name": "ignored", "parameters_schema": {"type": "object"}}')
    body = task_type_update_body({}, _update_args("--file", f"@{path}", "--description", "new"))
    assert body == {"parameters_schema": {"type": "object"}, "description": "new"}
    path.write_text("[1]")
    with pytest.raises(UsageError, match="JSON object"):
        task_type_update_body({}, _update_args("--file", f"@{path}"))
