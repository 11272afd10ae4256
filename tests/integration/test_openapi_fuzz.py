"""schemathesis against /openapi.json, in process: no 5xx, every answer as the schema says.

Each operation is tried with generated valid and invalid input, under a token
of every scope (and the admin), sometimes aimed at objects that exist so the
fuzzer gets past 404 into the routes' own logic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from pao.settings import Settings
from tests.helpers import SEED_TASK, auth

pytestmark = [
    pytest.mark.slow,
    # psycopg_pool jitters each new connection's lifetime with the global `random`, from its
    # own threads; when that lands while hypothesis draws a case in this thread, hypothesis
    # warns that the strategy used `random`. The strategies here draw only from
    # hypothesis's own randoms, so the warning is about the app's threads, not the test.
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module inside strategies"
        ":hypothesis.errors.HypothesisDeprecationWarning"
    ),
]

EXAMPLES = 30  # per operation and mode: about 1,300 requests in all
SCOPES = ("tasks:read", "tasks:write", "runs:read", "events:publish")


@pytest.fixture
def fuzzed_app(db_url: str) -> Iterator[FastAPI]:
    app = create_app(Settings(pool_max_size=4), database_url=db_url)
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()  # schemathesis keeps the app started until told


def _seed(app: FastAPI, tokens: dict[str, str], db: psycopg.Connection[Any]) -> dict[str, str]:
    """Objects the fuzzer may aim at: a task with a run, and an agent it may change."""
    with TestClient(app) as client:
        owner = tokens["owner"]
        task = client.post("/tasks", json=SEED_TASK, headers=auth(owner)).json()
        run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(owner)).json()
    victim = db.execute("SELECT id FROM agents WHERE name = 'victim'").fetchone()
    assert victim is not None
    return {"task_id": task["id"], "run_id": run["id"], "agent_id": str(victim[0])}


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    tokens: dict[str, str],
    known: dict[str, str],
    tried: dict[str, int],
) -> None:
    """Up to EXAMPLES cases of one operation; hypothesis shrinks and reports any failure."""
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    if not operation.path.startswith("/health"):
        checks.append(not_a_server_error)  # /health answers 503 when unhealthy, as documented
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        who=st.sampled_from(sorted(tokens)),
        aim=st.booleans(),
    )
    def attempt(case: Any, who: str, aim: bool) -> None:
        if aim and mode is GenerationMode.POSITIVE:
            for name in case.path_parameters or {}:
                if name in known:
                    case.path_parameters[name] = known[name]
        tried[operation.label] = tried.get(operation.label, 0) + 1
        response = case.call(headers=auth(tokens[who]))
        case.validate_response(response, checks=checks)

    attempt()


SHARDS = 4
"""The operations are fuzzed in this many tests, each on a fresh database, so that parallel
test workers share the work; together they fuzz every operation."""


def _operations(app: FastAPI) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    return operations


def test_the_fuzzed_schema_has_every_operation(fuzzed_app: FastAPI) -> None:
    operations = _operations(fuzzed_app)
    assert len(operations) >= 25
    assert len({op.label for op in operations}) == len(operations)


@pytest.mark.parametrize("shard", range(SHARDS))
def test_the_api_keeps_its_openapi_promises(
    fuzzed_app: FastAPI, make_token: Callable[..., str], db: psycopg.Connection[Any], shard: int
) -> None:
    tokens = {scope: make_token(scope, name=scope) for scope in SCOPES}
    tokens["admin"] = make_token("admin", name="root")
    tokens["owner"] = make_token(*SCOPES, name="owner")
    make_token("tasks:read", name="victim")
    known = _seed(fuzzed_app, tokens, db)
    tried: dict[str, int] = {}
    mine = _operations(fuzzed_app)[shard::SHARDS]
    for operation in mine:
        _fuzz(operation, GenerationMode.POSITIVE, tokens, known, tried)
        if operation.path_parameters or operation.query or operation.body:
            _fuzz(operation, GenerationMode.NEGATIVE, tokens, known, tried)
    total = sum(tried.values())
    print(f"\nschemathesis tried {total} requests on {len(tried)} operations")
    assert set(tried) == {op.label for op in mine}
    assert total >= len(tried) * EXAMPLES, {k: n for k, n in tried.items() if n < EXAMPLES}


def test_errors_are_declared_as_problems(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    put = doc["paths"]["/tasks/{task_id}"]["put"]["responses"]
    assert {"200", "400", "401", "403", "404", "409", "412", "413", "422", "503"} <= set(put)
    for code, response in put.items():
        if int(code) >= 400:
            assert list(response["content"]) == ["application/problem+json"], code
    live = doc["paths"]["/health/live"]["get"]["responses"]
    assert set(live) == {"200"}
