"""The OpenAPI document: every error a route can answer, declared as a problem.

FastAPI declares only the success response and its own 422 shape, which our
routes never send. Here each operation gets the problem responses its shape
implies (a token: 401, 403, 429; a path id: 404; input: 422; a body: 400,
413), plus those its decorator names (`conflicts(409, 412)`), all as
`application/problem+json`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api.deps import RequireScope
from api.models import Problem
from api.problems import PROBLEM_JSON

_REF = "#/components/schemas/Problem"

_DESCRIPTIONS = {
    400: "The body is not valid JSON text",
    401: "Missing, unknown, revoked or expired bearer token",
    403: "The token lacks the scope this endpoint needs",
    404: "No such object, or it belongs to another agent",
    409: "The object is not in a state that allows this, or the request is in flight",
    412: "If-Match names an older version",
    413: "The body is larger than 256 KiB",
    422: "Invalid input; `errors` names each field",
    429: "Too many requests or failed sign-ins; retry after `Retry-After` seconds",
    503: "The database or a tool server cannot be reached; retry shortly",
}


_RATE_HEADERS = {
    "X-RateLimit-Limit": "Requests this agent may make per minute",
    "X-RateLimit-Remaining": "Requests left in the current minute",
    "X-RateLimit-Reset": "Seconds until the current minute's count starts again",
}


def conflicts(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Extra problem statuses a route answers, for its decorator's `responses=`."""
    return {status: {"description": _DESCRIPTIONS[status]} for status in statuses}


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, including those inside included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += api_routes(list(inner.routes))
    return found


def _needs_token(route: APIRoute) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, RequireScope):
            return True
        stack.extend(dep.dependencies)
    return False


def _implied(route: APIRoute) -> set[int]:
    statuses: set[int] = set()
    dependant = route.dependant
    flat = [dependant, *dependant.dependencies]
    if _needs_token(route):
        statuses |= {401, 403, 429, 503}
    if any(d.path_params for d in flat):
        statuses |= {404, 422}
    if any(d.query_params or d.header_params for d in flat):
        statuses.add(422)
    methods = route.methods or set()
    if route.body_field is not None or methods & {"POST", "PUT"}:
        statuses |= {400, 413, 422}
    return statuses


def _problem_response(status: int, existing: dict[str, Any] | None) -> dict[str, Any]:
    description = _DESCRIPTIONS.get(status) or (existing or {}).get("description") or "Error"
    out: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF}}},
    }
    if status in (429, 503):
        out["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "schema": {"type": "integer"},
            }
        }
    return out


def _rate_headers() -> dict[str, Any]:
    return {
        name: {"description": text, "schema": {"type": "integer"}}
        for name, text in _RATE_HEADERS.items()
    }


def document(app: FastAPI) -> None:
    """Make `app.openapi()` declare every problem response (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem_schema.pop("$defs", {}))
        components["Problem"] = problem_schema
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for route in api_routes(list(app.routes)):
            if not route.include_in_schema:
                continue
            implied = _implied(route)
            for method in route.methods or ():
                operation = schema["paths"][route.path_format][method.lower()]
                responses: dict[str, Any] = operation["responses"]
                declared = {int(code) for code in responses if code.isdigit()}
                for status in sorted(implied | {s for s in declared if s >= 400}):
                    existing = responses.get(str(status))
                    if (
                        existing
                        and "content" in existing
                        and PROBLEM_JSON not in existing["content"]
                        and status != 422
                    ):
                        # A route's own error body (health); FastAPI's 422 shape is replaced.
                        continue
                    responses[str(status)] = _problem_response(status, existing)
                if _needs_token(route):
                    for code, response in responses.items():
                        if int(code) < 400 or code == "429":
                            response.setdefault("headers", {}).update(_rate_headers())
                operation["responses"] = dict(sorted(responses.items()))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
