"""The tools a worker can run: the built-ins. MCP tools are not wired in yet."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.store import work
from pao.templates import JSONValue
from worker.http_tool import Allow, ToolFailed, http_request
from worker.pipeline import StepCall, Tool


class Toolbox:
    """Looks up the function behind a step's `uses` for one run."""

    def __init__(
        self, pool: AsyncConnectionPool[db.Conn], *, run_id: uuid.UUID, allow: Allow
    ) -> None:
        self.pool = pool
        self.run_id = run_id
        self.allow = allow

    def __call__(self, uses: str) -> Tool:
        tools: dict[str, Tool] = {
            "log": self.log,
            "sleep": self.sleep,
            "events.publish": self.publish,
            "http.request": self.http,
        }
        if uses in tools:
            return tools[uses]
        return self.unavailable(uses)

    async def log(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        await call.log(str(args.get("level", "info")), str(args["message"]))
        return {"logged": True}

    async def sleep(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        seconds = float(args["seconds"])
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    async def publish(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        """Store the event for the scheduler to fan out; a retried step publishes it once."""
        async with db.connection(self.pool) as conn:
            event_id = await work.publish_from_step(
                conn,
                type=str(args["type"]),
                payload=args.get("payload", {}),
                run_id=self.run_id,
                idempotency_key=call.idempotency_key,
            )
        return {"published": event_id is not None, "event_id": str(event_id) if event_id else None}

    async def http(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        result: JSONValue = await http_request(args, self.allow)
        return result

    def unavailable(self, uses: str) -> Tool:
        async def fail(args: dict[str, Any], call: StepCall) -> JSONValue:
            raise ToolFailed(
                f"tool {uses!r} cannot run here: this worker runs the built-in tools only "
                "(MCP tools are not supported yet)"
            )

        return fail
