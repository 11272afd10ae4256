"""JSON parameters reach PostgreSQL intact whichever encoder writes them."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pao import db as pao_db  # installs the JSON encoder


@pytest.mark.parametrize(
    "value",
    [
        {"text": "héllo ✓", "n": 1, "f": 0.1, "big": 1.5e10, "nested": [True, None, {"a": []}]},
        {"beyond 64 bits": 2**100, "negative": -(2**80)},  # orjson refuses: json.dumps writes
        {"1": "string keys", "list": list(range(50))},
    ],
)
def test_values_round_trip_through_jsonb(db: psycopg.Connection[Any], value: Any) -> None:
    row = db.execute("SELECT %s::jsonb AS v", (Jsonb(value),)).fetchone()
    assert row is not None
    assert row[0] == value


def test_keys_that_are_not_strings_are_written_as_json_would() -> None:
    assert pao_db.dump_json({1: "x"}) == '{"1": "x"}'
    assert pao_db.dump_json({"a": 1}) == b'{"a":1}'
