"""RFC 7807 problem responses: the one place that maps errors to HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pao.db import advice, is_transient, is_unavailable
from pao.errors import (
    BudgetExceeded,
    ClaimLost,
    Conflict,
    DatabaseUnavailable,
    FieldError,
    Forbidden,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InvalidInput,
    NotFound,
    NotMigrated,
    PaoError,
    PreconditionFailed,
    QuotaExceeded,
    RangeNotSatisfiable,
    RateLimited,
    RunRateLimited,
    TaskTypeUnavailable,
    TooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    UploadInterrupted,
    UploadStalled,
)
from pao.mcp import McpUnavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request body too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}

_STATUS: list[tuple[type[PaoError], int, str]] = [
    (InvalidInput, 422, "validation"),
    (IdempotencyMismatch, 422, "idempotency-mismatch"),
    (IdempotencyInFlight, 409, "idempotency-in-flight"),
    (NotFound, 404, "not-found"),
    (ClaimLost, 409, "claim-lost"),
    (TaskTypeUnavailable, 422, "task-type-unavailable"),
    (Conflict, 409, "conflict"),
    (PreconditionFailed, 412, "precondition-failed"),
    (Forbidden, 403, "forbidden"),
    (Unauthenticated, 401, "unauthenticated"),
    (BudgetExceeded, 429, "budget-exceeded"),
    (RunRateLimited, 429, "run-rate-limited"),
    (RateLimited, 429, "rate-limited"),
    (QuotaExceeded, 409, "quota-exceeded"),
    (TooLarge, 413, "too-large"),
    (UploadStalled, 408, "upload-stalled"),
    (UploadInterrupted, 400, "upload-interrupted"),
    (UnsupportedMediaType, 415, "unsupported-media-type"),
    (RangeNotSatisfiable, 416, "range-not-satisfiable"),
    (DatabaseUnavailable, 503, "database-unavailable"),
    (NotMigrated, 503, "not-migrated"),
    (McpUnavailable, 503, "tool-server-unavailable"),
]


def problem_type(exc: PaoError) -> tuple[int, str]:
    """The status and problem type an error is answered with (e.g. 409,
    `urn:pao:problem:claim-lost`), for a batch's per-item outcomes."""
    for cls, status, slug in _STATUS:
        if isinstance(exc, cls):
            return status, f"urn:pao:problem:{slug}"
    return 500, "urn:pao:problem:internal-error"


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def field_name(loc: Sequence[str | int]) -> str:
    """`("body", "payload", "pipeline", 1, "id")` → `payload.pipeline[1].id`."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def problem(
    status: int,
    detail: str,
    *,
    request: Request | None = None,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:pao:problem:{slug or _TITLES.get(status, 'error').lower().replace(' ', '-')}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "request_id": request_id_of(request) if request else None,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def field_errors(errors: list[FieldError]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = list(err.loc)
        if not loc or loc[0] not in ("body", "query", "path", "header"):
            loc = ["body", *loc]
        out.append({"field": field_name(loc), "loc": loc, "message": err.message})
    return out


def _pydantic_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [p if isinstance(p, int | str) else str(p) for p in err.get("loc", ())]
        out.append(
            {"field": field_name(loc), "loc": loc, "message": str(err.get("msg", "invalid"))}
        )
    return out


async def _on_pao_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PaoError)
    for cls, status, slug in _STATUS:
        if isinstance(exc, cls):
            headers: dict[str, str] = {}
            errors = None
            if isinstance(exc, InvalidInput):
                errors = field_errors(exc.errors)
            if isinstance(exc, Unauthenticated):
                headers["WWW-Authenticate"] = 'Bearer realm="pao"'
            if status == 503:
                headers["Retry-After"] = "2"
            if isinstance(exc, RateLimited):
                headers["Retry-After"] = str(exc.retry_after)
            if isinstance(exc, RangeNotSatisfiable):
                headers["Content-Range"] = f"bytes */{exc.size}"
            return problem(
                status, exc.message, request=request, slug=slug, errors=errors, headers=headers
            )
    return await unexpected_error_response(request, exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _pydantic_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem(422, detail, request=request, slug="validation", errors=errors)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
    return problem(exc.status_code, detail, request=request, headers=dict(exc.headers or {}))


async def unexpected_error_response(request: Request, exc: Exception) -> JSONResponse:
    """The answer to an exception nothing else handled: 503 if the database is away or its
    error may pass on a retry (a timeout, a lock, an internal error), else 500."""
    if is_unavailable(exc):
        return await _on_pao_error(request, DatabaseUnavailable())
    if is_transient(exc):
        # A timeout, a lock not granted, an internal error: the client may retry it.
        log.warning(
            "database error on %s %s: %s (%s)", request.method, request.url.path, exc, advice(exc)
        )
        return await _on_pao_error(request, DatabaseUnavailable())
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500,
        "an unexpected error occurred; it has been logged with this request_id",
        request=request,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(PaoError, _on_pao_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
