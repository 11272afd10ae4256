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

pytestmark = pytest.mark.slow

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


def test_the_api_keeps_its_openapi_promises(
    fuzzed_app: FastAPI, make_token: Callable[..., str], db: psycopg.Connection[Any]
) -> None:
    tokens = {scope: make_token(scope, name=scope) for scope in SCOPES}
    tokens["admin"] = make_token("admin", name="root")
    tokens["owner"] = make_token(*SCOPES, name="owner")
    make_token("tasks:read", name="victim")
    known = _seed(fuzzed_app, tokens, db)
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    tried: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        _fuzz(operation, GenerationMode.POSITIVE, tokens, known, tried)
        if operation.path_parameters or operation.query or operation.body:
            _fuzz(operation, GenerationMode.NEGATIVE, tokens, known, tried)
    total = sum(tried.values())
    print(f"\nschemathesis tried {total} requests on {len(tried)} operations")
    assert len(tried) >= 25
    assert total >= len(tried) * EXAMPLES


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
