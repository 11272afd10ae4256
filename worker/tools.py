"""The tools a worker can run: the built-ins, and the MCP servers of its tools file."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.asset_inputs import mentions_assets
from pao.domain.agents import check_step_scopes
from pao.errors import MissingScope
from pao.settings import Settings
from pao.store import events, work
from pao.store.events import AudienceValue
from pao.store.work import Lease
from pao.templates import JSONValue
from pao.tools import BUILTIN_TOOLS
from pao.vocabulary import LogLevel
from worker.http_tool import Allow, ToolFailed, http_request
from worker.pipeline import RemoteStep, StepCall, Tool

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the MCP SDK is loaded only by a worker whose tools file names servers
    from pao.mcp import McpHub
    from worker.files import StepFiles


@dataclass(frozen=True)
class FileLimits:
    """What a step may save and send: PAO_ASSET_MAX_BYTES and PAO_ASSET_QUOTA_BYTES for the
    files it saves, PAO_STEP_INPUT_MAX_BYTES for the assets' content sent to an MCP tool."""

    max_bytes: int
    quota_bytes: int
    inline_max_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> FileLimits:
        return cls(
            max_bytes=settings.asset_max_bytes,
            quota_bytes=settings.asset_quota_bytes,
            inline_max_bytes=settings.step_input_max_bytes,
        )


class Toolbox:
    """Looks up the function behind a step's `uses` for one run."""

    def __init__(
        self,
        pool: AsyncConnectionPool[db.Conn],
        *,
        run_id: uuid.UUID,
        allow: Allow,
        mcp: McpHub | None = None,
        lease: Lease | None = None,
        files: FileLimits | None = None,
    ) -> None:
        self.pool = pool
        self.run_id = run_id
        self.allow = allow
        self.mcp = mcp
        self.lease = lease  # the run's: what a step saves is committed only under it
        self.file_limits = files or FileLimits.of(Settings())

    def files(self) -> StepFiles:
        """The run's door to assets (loaded by the first step that saves or sends one)."""
        from pao.domain.assets import Limits
        from worker.files import StepFiles

        limits = self.file_limits
        return StepFiles(
            self.pool,
            run_id=self.run_id,
            lease=self.lease,
            limits=Limits(max_bytes=limits.max_bytes, quota_bytes=limits.quota_bytes),
            inline_max_bytes=limits.inline_max_bytes,
        )

    def __call__(self, uses: str) -> Tool:
        built_in = _BUILT_IN.get(uses)
        if built_in is not None:
            method: Tool = getattr(self, built_in)
            return method
        server, dot, tool = uses.partition(".")
        if dot and self.mcp is not None and server in self.mcp:
            return functools.partial(self.call_mcp, server, tool)
        return self.remote(uses)

    def remote(self, uses: str) -> Tool:
        """Neither built in nor one of this worker's MCP servers: a task type's, maybe. The
        run offers the step (`worker.run`), which fails if no such task type is active."""

        async def offer(args: dict[str, Any], call: StepCall) -> JSONValue:
            raise RemoteStep(uses)

        return offer

    async def log(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        await call.log(str(args.get("level", LogLevel.INFO)), str(args["message"]))
        return {"logged": True}

    async def sleep(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        seconds = float(args["seconds"])
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    async def publish(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        """Store the event for the scheduler to fan out; a retried step publishes it once.

        The step acts for its task's owner as the owner is now: scopes taken away or an
        owner disabled since the task was written fail the step, for good (MissingScope).
        """
        audience = _audience(args.get("audience"))
        async with db.connection(self.pool) as conn:
            origin = await events.step_origin(conn, self.run_id)
            if origin is None:
                raise ToolFailed("the run is no longer in the database")
            owner = origin.owner
            whose = f"the task's owner (agent {owner.name!r})"
            if not origin.usable:
                raise MissingScope(
                    f"step '{call.step_id}' uses {_PUBLISH.name}, but {whose} is disabled, "
                    "expired or deleted, so its steps may publish nothing",
                    scope=_PUBLISH.required_scope or "",
                )
            check_step_scopes(owner, call.step_id, _PUBLISH, args, whose=whose)
            event_id = await work.publish_from_step(
                conn,
                type=str(args["type"]),
                payload=args.get("payload", {}),
                run_id=self.run_id,
                idempotency_key=call.idempotency_key,
                published_by=owner.id,
                hop=origin.hop,
                audience=audience,
            )
        return {"published": event_id is not None, "event_id": str(event_id) if event_id else None}

    async def http(self, args: dict[str, Any], call: StepCall) -> JSONValue:
        save = None
        if args.get("save_body"):
            files = self.files()

            async def save(
                chunks: AsyncIterator[bytes], filename: str, media_type: str | None
            ) -> dict[str, Any]:
                saved = await files.save(
                    call.step_id, chunks, filename=filename, media_type=media_type
                )
                return saved.summary()

        send = None
        if args.get("body_asset") is not None:
            files = self.files()
            given = await files.inputs(call.step_id, _HTTP.input_schema, args)
            if not given:  # checked above: an id that names no usable asset fails there
                raise ToolFailed("body_asset names no asset")
            send = files.body(given[0])
        result: JSONValue = await http_request(args, self.allow, save, send)
        return result

    async def call_mcp(
        self, server: str, tool: str, args: dict[str, Any], call: StepCall
    ) -> JSONValue:
        """Call a tool on the worker's shared session with its MCP server.

        The step's timeout and a cancel stop waiting for the answer; the session
        stays usable for other steps. The step's idempotency key goes along in
        the request's `_meta`, for servers that can use it.

        Assets: an input the tool's schema marks `"format": "asset"` keeps the asset's id,
        and the asset's content goes along in `_meta["pao/assets"][id]` (base64, checked
        first as the task's owner may use it). Images, audio and embedded resources in the
        result are stored as assets of the run, listed in the output's `assets`.
        """
        from pao.mcp import (  # loaded with the hub
            McpCallFailed,
            McpUnavailable,
            public_reason,
            split_result,
            with_files,
        )
        from worker.files import ASSETS_META, NewFile

        assert self.mcp is not None
        try:
            meta = None
            schema = await self.mcp.input_schema(server, tool)
            if schema and mentions_assets(schema):
                files = self.files()
                given = await files.inputs(call.step_id, schema, args)
                if given:
                    meta = {ASSETS_META: await files.inline(call.step_id, given)}
            result = await self.mcp.call_tool_result(
                server, tool, args, idempotency_key=call.idempotency_key, meta=meta
            )
            output, found = split_result(result, f"{server}.{tool}")
        except (McpCallFailed, McpUnavailable) as exc:
            reason = public_reason(exc, server)
            if reason != exc.message:
                log.warning("run %s step %s: %s", self.run_id, call.step_id, exc.message)
            raise ToolFailed(reason) from None
        if not found:
            return output
        saved = await self.files().save_all(
            call.step_id, (NewFile(f.data, f.filename, f.media_type) for f in found)
        )
        return with_files(output, [s.summary() for s in saved])

    def unavailable(self, uses: str) -> Tool:
        async def fail(args: dict[str, Any], call: StepCall) -> JSONValue:
            raise ToolFailed(
                f"tool {uses!r} cannot run here: it is not a built-in tool, and this worker's "
                "PAO_TOOLS_FILE declares no MCP server by that name"
            )

        return fail


_PUBLISH = next(spec for spec in BUILTIN_TOOLS if spec.name == "events.publish")
_HTTP = next(spec for spec in BUILTIN_TOOLS if spec.name == "http.request")


def _audience(value: object) -> AudienceValue:
    """A step's rendered `audience`: "*", agent ids, or None (the owner's own tasks only)."""
    if value is None:
        return None
    if value == "*":
        return "*"
    if isinstance(value, list):
        try:
            return [uuid.UUID(str(item)) for item in value]
        except ValueError:
            pass
    raise ToolFailed(f"'audience' must be \"*\" or a list of agent ids, not {value!r}")


# The built-in tools' methods by name: a dict of bound methods made for every lookup cost
# more than a no-op step's own work.
_BUILT_IN = {"log": "log", "sleep": "sleep", "events.publish": "publish", "http.request": "http"}
