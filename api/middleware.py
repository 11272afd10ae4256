"""Request ids, metrics, access logs, body limits and text checks, as plain ASGI middleware.

Body checks run here, before routing, because FastAPI would otherwise parse a
deeply nested body recursively (a 500) and pass NUL characters through to
PostgreSQL (which rejects them: another 500).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import secrets
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.problems import field_errors, problem, unexpected_error_response
from pao import logs
from pao.pipeline import reject_bad_text

access_log = logging.getLogger("api.access")

MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 64
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Bodies read by their route as they arrive (an upload is streamed, never held whole): the
# route bounds them itself.
STREAMED_BODIES = frozenset({("POST", "/assets")})
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # visible ASCII: safe to echo in a header


class _RequestIds:
    """Ids unique across processes and restarts without a random read per request.

    A random prefix per process (new after a fork) and a counter: the id needs only to
    be unique, and drawing 16 random bytes for every request was about 2 % of a GET.
    """

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


_request_ids = _RequestIds()


class _NotJson(ValueError):
    """A number JSON does not have (NaN, Infinity, or too large for a float)."""


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotJson(f"{text} is too large a number")
    return value


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


class RequestMiddleware:
    """Gives every request an id (echoed in X-Request-ID), counts it and vets JSON bodies.

    With `access_log`, each request also gets one log line carrying its ids
    (uvicorn's own access log knows none of them).
    """

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        # labels() looks its series up under a lock on every call; these are looked up once.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _client_request_id(scope) or _request_ids.next()
        scope.setdefault("state", {})["request_id"] = request_id
        bound = logs.request_id.set(request_id)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Appended as raw pairs (no route sets these): a MutableHeaders would scan
                # the list for each one, on every answer.
                added = [(b"x-request-id", request_id.encode("latin-1"))]
                rate = scope["state"].get("rate_limit")
                if rate is not None:  # set by authentication: every signed-in answer shows it
                    limit, remaining, reset = rate
                    added += [
                        (b"x-ratelimit-limit", b"%d" % limit),
                        (b"x-ratelimit-remaining", b"%d" % remaining),
                        (b"x-ratelimit-reset", b"%d" % reset),
                    ]
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        try:
            await self._call(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(bound)
            self._record(scope, status, time.perf_counter() - started, request_id)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or metrics.UNMATCHED
        method = scope["method"] if scope["method"] in _METHODS else "other"
        key = (method, template, status)
        series = self._series.get(key)
        if series is None:  # a few dozen keys at most: methods x route templates x statuses
            series = self._series[key] = (
                metrics.HTTP_REQUESTS.labels(method, template, str(status)),
                metrics.HTTP_SECONDS.labels(method, template),
            )
        series[0].inc()
        series[1].observe(seconds)
        if self.access_log:
            params = scope.get("path_params") or {}
            access_log.info(
                "%s %s %s %.1fms",
                method,
                template,
                status,
                seconds * 1000,
                extra={
                    "request_id": request_id,
                    "task_id": params.get("task_id"),
                    "run_id": params.get("run_id"),
                },
            )

    async def _call(self, scope: Scope, receive: Receive, send_with_id: Send) -> None:
        if (
            scope["method"] in ("POST", "PUT", "PATCH")
            and (scope["method"], scope["path"]) not in STREAMED_BODIES
        ):
            body, rejection = await self._read_body(Request(scope), receive)
            if rejection is not None:
                await rejection(scope, receive, send_with_id)
                return
            receive = _replay(body, receive)
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            # Here rather than in Starlette's outermost handler, so even a 500 has its id.
            if started:
                raise
            response = await unexpected_error_response(Request(scope), exc)
            await response(scope, receive, send_with_id)

    async def _read_body(self, request: Request, receive: Receive) -> tuple[bytes, Any]:
        declared = request.headers.get("content-length")
        too_big = problem(
            413,
            f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB; send less",
            request=request,
        )
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return b"", too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        return body, self._vet_json(request, body)

    @staticmethod
    def _vet_json(request: Request, body: bytes) -> Any:
        if not body:
            return None
        try:
            value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            return _nested(request)
        except _NotJson as exc:
            return problem(
                422,
                f"{exc}; send finite numbers only",
                request=request,
                slug="validation",
                errors=[{"field": "body", "loc": ["body"], "message": str(exc)}],
            )
        except ValueError:
            return None  # not JSON at all: FastAPI answers with its own 4xx
        if not _depth_ok(value, MAX_DEPTH):
            return _nested(request)
        errors = reject_bad_text(value, ())
        if errors:
            return problem(
                422,
                "text may not contain NUL characters or unpaired surrogates",
                request=request,
                slug="validation",
                errors=field_errors(errors),
            )
        return None


def _client_request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID if it is safe to echo (read off the raw headers: building
    a Request and its Headers for this alone cost every request a few microseconds)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            return given if _CLIENT_ID.match(given) else None
    return None


def _nested(request: Request) -> Any:
    return problem(
        422,
        f"the JSON body is nested more than {MAX_DEPTH} levels deep; flatten it",
        request=request,
        slug="validation",
        errors=[{"field": "body", "loc": ["body"], "message": "nested too deeply"}],
    )


def _replay(body: bytes, upstream: Receive) -> Receive:
    """Hand the buffered body to the app, then pass through (disconnect notices)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive
