"""Idempotency-Key handling for the POST endpoints that create things."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request, Response

from api.deps import AppState
from pao import db
from pao.errors import IdempotencyInFlight, IdempotencyMismatch, InvalidInput
from pao.models import Agent
from pao.store import idempotency

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# Headers of the first response that a replay repeats.
_KEPT_HEADERS = ("location", "etag")


@dataclass
class Idempotent:
    """The request's key, if any; `replay` holds the first response when this is a repeat."""

    key: str | None
    endpoint: str
    agent: Agent
    replay: Response | None = None

    async def complete(self, conn: db.Conn, response: Response) -> None:
        """Store `response` in the work's own transaction."""
        if self.key is None:
            return
        headers = {k: v for k, v in response.headers.items() if k in _KEPT_HEADERS}
        await idempotency.complete(
            conn,
            agent_id=self.agent.id,
            endpoint=self.endpoint,
            key=self.key,
            status=response.status_code,
            body=bytes(response.body).decode(),
            headers=headers,
        )


def request_hash(raw_body: bytes) -> bytes:
    """What tells "the same request again" from "another request": the JSON, not its spacing."""
    try:
        canonical = json.dumps(json.loads(raw_body), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = raw_body.decode(errors="replace")
    return hashlib.sha256(canonical.encode()).digest()


@asynccontextmanager
async def idempotent(request: Request, state: AppState, agent: Agent) -> AsyncIterator[Idempotent]:
    """Claim the Idempotency-Key (if sent) around the block; release it if the block fails."""
    key = request.headers.get("idempotency-key")
    endpoint = f"{request.method} {request.url.path}"
    guard = Idempotent(key, endpoint, agent)
    if key is None:
        yield guard
        return
    if not _KEY.match(key):
        raise InvalidInput.one(
            ("header", "Idempotency-Key"), "must be 1 to 255 visible ASCII characters"
        )
    digest = request_hash(await request.body())
    async with state.tx() as conn:
        claim = await idempotency.claim(
            conn, agent_id=agent.id, endpoint=endpoint, key=key, request_hash=digest
        )
    if claim.outcome == "mismatch":
        raise IdempotencyMismatch()
    if claim.outcome == "in_flight":
        raise IdempotencyInFlight()
    if claim.outcome == "replay":
        assert claim.status is not None
        assert claim.body is not None
        guard.replay = Response(
            claim.body,
            status_code=claim.status,
            media_type="application/json",
            headers={**claim.headers, "Idempotent-Replayed": "true"},
        )
        yield guard
        return
    try:
        yield guard
    except BaseException:
        async with state.tx() as conn:
            await idempotency.release(conn, agent_id=agent.id, endpoint=endpoint, key=key)
        raise
