"""Request ids, body limits and text checks, as plain ASGI middleware.

Body checks run here, before routing, because FastAPI would otherwise parse a
deeply nested body recursively (a 500) and pass NUL characters through to
PostgreSQL (which rejects them: another 500).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import field_errors, problem
from pao.pipeline import reject_bad_text

MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 64
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
    """Gives every request an id (echoed in X-Request-ID) and vets JSON bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.headers.get("x-request-id", "")
        request_id = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            body, rejection = await self._read_body(request, receive)
            if rejection is not None:
                await rejection(scope, receive, send_with_id)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_with_id)

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
        if not body or "json" not in request.headers.get("content-type", "json"):
            return None
        try:
            value = json.loads(body)
        except RecursionError:
            return _nested(request)
        except ValueError:
            return None  # FastAPI answers malformed JSON with its own 422
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
