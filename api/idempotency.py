"""Idempotency-Key handling for the POST endpoints that create things."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from api.deps import AppState
from pao import db
from pao.errors import IdempotencyInFlight, IdempotencyMismatch, InvalidInput
from pao.models import Agent
from pao.store import idempotency

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass
class Idempotent:
    """The request's key, if any; `replay` holds the first response when this is a repeat."""

    key: str | None
    endpoint: str
    agent: Agent
    replay: JSONResponse | None = None

    async def complete(self, conn: db.Conn, status: int, body: Any) -> None:
        if self.key is not None:
            await idempotency.complete(
                conn,
                agent_id=self.agent.id,
                endpoint=self.endpoint,
                key=self.key,
                status=status,
                body=body,
            )


def request_hash(body: dict[str, Any]) -> bytes:
    """The fingerprint that tells "the same request again" from "another request"."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).digest()


@asynccontextmanager
async def idempotent(
    request: Request, state: AppState, agent: Agent, body: dict[str, Any]
) -> AsyncIterator[Idempotent]:
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
    digest = request_hash(body)
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
        guard.replay = JSONResponse(
            claim.body, status_code=claim.status, headers={"Idempotent-Replayed": "true"}
        )
        yield guard
        return
    try:
        yield guard
    except BaseException:
        async with state.tx() as conn:
            await idempotency.release(conn, agent_id=agent.id, endpoint=endpoint, key=key)
        raise
