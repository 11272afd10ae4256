"""MCP servers from the tools file, reached with the official MCP SDK.

`McpHub` keeps one `ClientSession` per declared server, opened on first use and
shared by every caller (a session multiplexes requests). Each session belongs to
an owner task that enters the transport and the session, says when it is
ready, waits until it is told to close or the server goes away, and exits them
again: anyio context managers must be left in the task that entered them.

A server that went away is noticed without polling. For a stdio server the
owner relays the server's messages to the session and sees its stdout close
when the process exits; an HTTP transport fails as soon as a request cannot be
posted; a restarted HTTP server answers 404 to the old session id. The next use
then starts the process (or opens a session) again. A request the server
provably never received (connection refused, unknown session) is sent once more
on the fresh session; one that was in flight when the server died fails, since
the tool may have run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import mimetypes
import os
import shlex
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, McpError, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.message import SessionMessage

from pao.errors import PaoError
from pao.templates import JSONValue
from pao.tools import McpServerConfig, ToolSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
"""Seconds a server has to start (or accept the connection) and answer `initialize`."""
CLOSE_TIMEOUT = 5.0
"""Seconds a session has to shut down before its owner task is cancelled."""
STDERR_LINES = 20
"""Lines of a stdio server's stderr kept to explain a failure."""
IDEMPOTENCY_META = "pao/idempotency_key"
"""The `_meta` key of a tool call that carries the step's idempotency key."""

# The HTTP transport reports a session the server no longer knows (HTTP 404) as
# this JSON-RPC error; the request was refused, so it is safe to send again.
_SESSION_TERMINATED = 32600

T = TypeVar("T")


class McpUnavailable(PaoError):
    """An MCP server cannot be reached right now; retry shortly."""


class McpCallFailed(PaoError):
    """An MCP tool call failed."""

    # True when the server itself went away, rather than its tool answering with an error.
    transport = False


def public_reason(exc: McpUnavailable | McpCallFailed, server: str) -> str:
    """What a task's owner may read of an MCP failure: a tool's own error, or only that
    its server failed. How a server is run (its command line, directory, stderr tail)
    is for the operator's log and for admins, never in a run that any agent can read."""
    if isinstance(exc, McpUnavailable):
        return f"MCP server {server!r} is not available; the worker's log says why"
    if exc.transport:
        return (
            f"MCP server {server!r} went away during the call; it is started again on the "
            "next call, and the worker's log says why"
        )
    return exc.message


class _Undelivered(Exception):
    """The server never received the request; a fresh session may send it again."""


class _Lost(Exception):
    """The connection ended while a request was in flight."""


def _client_version() -> str:
    try:
        return metadata.version("pao")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0"


CLIENT_INFO = types.Implementation(name="pao", version=_client_version())


INHERITED_ENV = frozenset(
    {"HOME", "LOGNAME", "USER", "SHELL", "TERM", "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR"}
    | {"SSL_CERT_FILE", "SSL_CERT_DIR"}
)
"""What a stdio server inherits from pao's environment (plus every `LC_*`): what any program
needs to run (the SDK's own default set, locale, time zone, temp directory, CA bundle) and
nothing that may be a secret. DATABASE_URL, PAO_ADMIN_TOKEN, cloud credentials and proxies
stay with pao; a server that needs a value has it declared in its `env`."""


def child_environment(config: McpServerConfig) -> dict[str, str]:
    """A stdio server's environment: a minimal set of ours, the declared `env` on top, pao's
    Python first on PATH.

    Minimal because a tool server is third-party code: it must not see pao's database URL
    or admin token. ``"python"`` in a tools file is the interpreter pao runs on, with the
    `mcp` SDK and everything else pao has installed.
    """
    inherited = {
        key: value
        for key, value in os.environ.items()
        if (key in INHERITED_ENV or key.startswith("LC_")) and not value.startswith("()")
    }
    env = {**inherited, **config.env}
    here = os.path.dirname(sys.executable)
    rest = env.get("PATH", os.defpath)
    env["PATH"] = here + os.pathsep + rest if rest else here
    return env


def describe(name: str, config: McpServerConfig) -> str:
    """`weather-mcp (python forecast.py in /srv/tools)` or `weather-mcp (http://…/mcp)`."""
    if config.command is not None:
        where = f" in {config.cwd}" if config.cwd else ""
        return f"{name!r} ({shlex.join(config.command)}{where})"
    assert config.url is not None
    # Messages reach API callers: leave out credentials in the URL.
    url = httpx.URL(config.url).copy_with(username=None, password=None, query=None)
    return f"{name!r} ({url})"


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _reason(exc: BaseException, *, stdio: bool) -> str:
    """One line on why a connection failed, from the innermost errors."""
    parts: list[str] = []
    for leaf in _leaves(exc):
        if isinstance(leaf, FileNotFoundError):
            text = f"no such program or directory: {leaf.filename}"
        elif isinstance(leaf, OSError):
            text = leaf.strerror or str(leaf)
        elif _is_closed(leaf):
            text = "the server process exited" if stdio else "the server closed the connection"
        elif isinstance(leaf, McpError):
            text = leaf.error.message
        elif isinstance(leaf, httpx.HTTPStatusError):
            text = f"HTTP {leaf.response.status_code} from {leaf.request.url}"
        elif isinstance(leaf, httpx.ConnectError):
            text = f"cannot connect ({leaf})" if str(leaf) else "cannot connect"
        elif isinstance(leaf, httpx.HTTPError):
            text = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
        else:
            text = str(leaf) or type(leaf).__name__
        if text not in parts:
            parts.append(text)
    return "; ".join(parts) or "the connection ended"


def _is_closed(exc: BaseException) -> bool:
    if isinstance(exc, McpError):
        return exc.error.code == types.CONNECTION_CLOSED
    return isinstance(
        exc, anyio.BrokenResourceError | anyio.ClosedResourceError | anyio.EndOfStream
    )


class _Stderr(asyncio.Protocol):
    """A stdio server's stderr: logged line by line, the last lines kept for error messages."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._line(raw)
        if len(self._partial) > 8192:
            self._line(self._partial)
            self._partial = b""

    def eof_received(self) -> bool | None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        return None

    def _line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if line:
            self.tail.append(line)
            log.info("MCP server %s: %s", self.server, line)

    def said(self) -> str:
        return " | ".join(self.tail)[-600:]


class _Connection:
    """One session with one server, held open by its owner task."""

    def __init__(self, name: str, config: McpServerConfig, connect_timeout: float) -> None:
        self.name = name
        self.config = config
        self.connect_timeout = connect_timeout
        self.session: ClientSession | None = None
        self.error: BaseException | None = None
        self.settled = asyncio.Event()  # ready, or failed before it was
        self.closed = asyncio.Event()  # the owner has ended: nothing more will be answered
        self._end = asyncio.Event()  # asked to close, or the server went away
        self._stderr: _Stderr | None = None
        self._timed_out = False
        self._owner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._owner = asyncio.create_task(self._own(), name=f"mcp-{self.name}")

    @property
    def usable(self) -> bool:
        return not self._end.is_set() and not self.closed.is_set()

    def end(self) -> None:
        """Stop using this session; the owner shuts it down."""
        self._end.set()

    async def ready(self) -> ClientSession:
        """The session once initialised; McpUnavailable if it could not be."""
        await self.settled.wait()
        if self.session is None or not self.usable:
            raise self.unavailable()
        return self.session

    def unavailable(self) -> McpUnavailable:
        where = describe(self.name, self.config)
        if self._timed_out:
            reason = f"it did not finish the MCP handshake within {self.connect_timeout:g}s"
        elif self.error is not None:
            reason = _reason(self.error, stdio=self.config.command is not None)
        else:
            reason = "the connection ended"
        if self.config.command is not None:
            said = self._stderr.said() if self._stderr else ""
            hint = (
                f" (its stderr: {said})"
                if said
                else "; check that the command runs and speaks MCP over stdio"
            )
        else:
            hint = "; check that the server is running and the URL is right"
        return McpUnavailable(f"MCP server {where} is not available: {reason}{hint}")

    def stderr_said(self) -> str:
        return self._stderr.said() if self._stderr else ""

    async def _own(self) -> None:
        loop = asyncio.get_running_loop()
        watchdog = loop.call_later(self.connect_timeout, self._give_up)
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open(stack)
                stack.push_async_callback(read.aclose)
                to_session, from_relay = anyio.create_memory_object_stream[
                    SessionMessage | Exception
                ](0)
                stack.push_async_callback(from_relay.aclose)
                stack.push_async_callback(to_session.aclose)
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)
                group.start_soon(self._relay, read, to_session)
                session = await stack.enter_async_context(
                    ClientSession(from_relay, write, client_info=CLIENT_INFO)
                )
                await session.initialize()
                watchdog.cancel()
                self.session = session
                self.settled.set()
                await self._end.wait()
        except asyncio.CancelledError as exc:
            self.error = exc
            if not self._timed_out:
                raise  # closing the hub: let the cancellation through
        except BaseException as exc:  # exception groups from the transport included
            self.error = exc
        finally:
            watchdog.cancel()
            self._end.set()
            self.closed.set()
            self.settled.set()

    def _give_up(self) -> None:
        if self._owner is not None and not self.settled.is_set():
            self._timed_out = True
            self._end.set()
            self.settled.set()  # waiters need not wait for the process to be stopped
            self._owner.cancel()

    async def _open(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[
        MemoryObjectReceiveStream[SessionMessage | Exception],
        MemoryObjectSendStream[SessionMessage],
    ]:
        config = self.config
        if config.command is not None:
            params = StdioServerParameters(
                command=config.command[0],
                args=config.command[1:],
                env=child_environment(config),
                cwd=config.cwd,
            )
            loop = asyncio.get_running_loop()
            reader, writer = os.pipe()
            stderr = self._stderr = _Stderr(self.name)
            pipe_in = os.fdopen(reader, "rb", buffering=0)  # the transport closes it
            try:
                transport, _ = await loop.connect_read_pipe(lambda: stderr, pipe_in)
            except BaseException:
                pipe_in.close()
                os.close(writer)
                raise
            stack.callback(transport.close)
            with os.fdopen(writer, "w", encoding="utf-8") as errlog:
                # The child has its own copy of the write end; ours is closed here.
                read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
            return read, write
        assert config.url is not None
        client = create_mcp_http_client(
            headers=dict(config.headers) or None,
            timeout=httpx.Timeout(30.0, read=300.0),
        )
        await stack.enter_async_context(client)
        read, write, _ = await stack.enter_async_context(
            streamable_http_client(config.url, http_client=client)
        )
        return read, write

    async def _relay(
        self,
        source: MemoryObjectReceiveStream[SessionMessage | Exception],
        sink: MemoryObjectSendStream[SessionMessage | Exception],
    ) -> None:
        """Hand the server's messages to the session; their end means the server went away."""
        try:
            async with source, sink:
                async for message in source:
                    await sink.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._end.set()

    async def request(self, send: Callable[[ClientSession], Awaitable[T]]) -> T:
        """Send one request; `_Lost` or `_Undelivered` if the connection ends meanwhile.

        The request runs in a task of its own, so a caller that is cancelled
        (a step's timeout) only abandons its own request: the shared session
        goes on serving everybody else.
        """
        assert self.session is not None
        session = self.session
        call = asyncio.ensure_future(send(session))
        lost = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not call.done():
                call.cancel()
                call.add_done_callback(_quiet)
        if not call.done():
            if self.error is not None and any(
                isinstance(e, httpx.ConnectError) for e in _leaves(self.error)
            ):
                raise _Undelivered()
            raise _Lost()
        try:
            return call.result()
        except McpError as exc:
            if exc.error.code == _SESSION_TERMINATED:
                self.end()
                raise _Undelivered() from exc
            if exc.error.code == types.CONNECTION_CLOSED:
                self.end()
                raise _Lost() from exc
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # The session's streams closed before the request went out.
            self.end()
            raise _Undelivered() from None

    async def aclose(self) -> None:
        owner = self._owner
        if owner is None or owner.done():
            return
        if not self.settled.is_set():
            owner.cancel()
        self._end.set()
        done, _ = await asyncio.wait({owner}, timeout=CLOSE_TIMEOUT)
        if not done:
            owner.cancel()
        await asyncio.gather(owner, return_exceptions=True)


def _quiet(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned request's outcome so asyncio does not report it."""
    if not task.cancelled():
        task.exception()


class McpHub:
    """One shared, self-healing session per MCP server of the tools file."""

    def __init__(
        self,
        servers: Mapping[str, McpServerConfig],
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.servers = dict(servers)
        self.connect_timeout = connect_timeout
        self._connections: dict[str, _Connection] = {}
        self._retired: list[_Connection] = []  # replaced, still shutting down
        self._closed = False
        # Each server's tools' input schemas, as the session they were listed on gave them.
        self._schemas: dict[str, tuple[_Connection, dict[str, dict[str, Any]]]] = {}

    def __contains__(self, server: object) -> bool:
        return server in self.servers

    async def _connection(self, server: str) -> _Connection:
        if self._closed:
            raise McpUnavailable(f"MCP server {server!r} is not available: pao is shutting down")
        config = self.servers.get(server)
        if config is None:
            raise McpUnavailable(f"MCP server {server!r} is not declared in PAO_TOOLS_FILE")
        conn = self._connections.get(server)
        if conn is None or not conn.usable:
            if conn is not None:
                # Its owner is already ending it; keep it until then so close() can wait.
                self._retired = [c for c in self._retired if not c.closed.is_set()]
                self._retired.append(conn)
            conn = _Connection(server, config, self.connect_timeout)
            self._connections[server] = conn
            conn.start()
        await conn.ready()
        return conn

    async def _request(
        self, server: str, what: str, send: Callable[[ClientSession], Awaitable[T]]
    ) -> T:
        for attempt in (1, 2):
            conn = await self._connection(server)
            try:
                return await conn.request(send)
            except _Undelivered:
                if attempt == 2:
                    raise conn.unavailable() from None
            except _Lost:
                said = conn.stderr_said()
                lost = McpCallFailed(
                    f"MCP server {server!r} went away during {what} (it may have crashed"
                    + (f"; its stderr: {said}" if said else "")
                    + "); it is started again on the next call"
                )
                lost.transport = True
                raise lost from None
        raise AssertionError("unreachable")

    async def list_tools(self, server: str) -> list[ToolSpec]:
        """The server's tools as `ToolSpec`s named `<server>.<tool>`, with their input schemas."""

        async def send(session: ClientSession) -> list[types.Tool]:
            tools: list[types.Tool] = []
            cursor: str | None = None
            while True:
                params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await session.list_tools(params=params)
                tools.extend(page.tools)
                cursor = page.nextCursor
                if not cursor:
                    return tools

        try:
            found = await self._request(server, "tools/list", send)
        except McpError as exc:
            raise McpUnavailable(
                f"MCP server {server!r} did not list its tools: {exc.error.message}"
            ) from None
        return [
            ToolSpec(
                name=f"{server}.{tool.name}",
                description=tool.description or tool.title or "",
                input_schema=dict(tool.inputSchema),
                server=server,
            )
            for tool in found
        ]

    async def input_schema(self, server: str, tool: str) -> dict[str, Any] | None:
        """The input schema the server lists for `tool` (None: no such tool), as listed once
        per session: a server restarted with new tools is asked again."""
        conn = await self._connection(server)
        known = self._schemas.get(server)
        if known is None or known[0] is not conn:
            specs = await self.list_tools(server)
            prefix = f"{server}."
            known = (conn, {s.name.removeprefix(prefix): s.input_schema for s in specs})
            self._schemas[server] = known
        return known[1].get(tool)

    async def call_tool(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> JSONValue:
        """Call `tool` and return its result as JSON; McpCallFailed when it fails.

        The result is the tool's structured content if it sent any, else its text
        parsed as JSON when it is one text that is JSON, else ``{"text": …}``.
        """
        result = await self.call_tool_result(
            server,
            tool,
            arguments,
            timeout_seconds=timeout_seconds,
            idempotency_key=idempotency_key,
        )
        return tool_output(result)

    async def call_tool_result(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> types.CallToolResult:
        """Call `tool` and return its result as the server sent it, once it is known not to
        be an error (McpCallFailed). `meta` goes along in the request's `_meta`, with the
        step's idempotency key."""
        sent: dict[str, Any] = dict(meta or {})
        if idempotency_key:
            sent[IDEMPOTENCY_META] = idempotency_key
        request_meta = sent or None
        read_timeout = timedelta(seconds=timeout_seconds) if timeout_seconds else None

        async def send(session: ClientSession) -> types.CallToolResult:
            return await session.call_tool(tool, arguments, read_timeout, meta=request_meta)

        label = f"{server}.{tool}"
        try:
            result = await self._request(server, f"the call of {label!r}", send)
        except McpError as exc:
            if exc.error.code == httpx.codes.REQUEST_TIMEOUT and timeout_seconds:
                raise McpCallFailed(
                    f"MCP tool {label!r} did not answer within {timeout_seconds:g}s"
                ) from None
            raise McpCallFailed(f"MCP tool {label!r} failed: {exc.error.message}") from None
        except RuntimeError as exc:  # the SDK's check of structured output against its schema
            raise McpCallFailed(f"MCP tool {label!r} returned an invalid result: {exc}") from None
        if result.isError:
            raise McpCallFailed(
                f"MCP tool {label!r} reported an error: {_text(result) or 'no detail'}"
            )
        return result

    async def close(self) -> None:
        """End every session; stdio servers are stopped (stdin closed, then signalled)."""
        self._closed = True
        connections = [*self._connections.values(), *self._retired]
        self._connections.clear()
        self._retired.clear()
        await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)


def _text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def tool_output(result: types.CallToolResult) -> JSONValue:
    """A tool result as one JSON value: structured content, else JSON text, else the text."""
    if result.structuredContent is not None:
        structured: JSONValue = result.structuredContent
        return structured
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    if len(result.content) == 1 and len(texts) == 1:
        try:
            parsed: JSONValue = json.loads(texts[0])
        except ValueError:
            pass
        else:
            return parsed
    return {"text": "\n".join(texts)}


# Files in tool results -------------------------------------------------------------------

MAX_FILES = 100
"""Files (images, audio, embedded resources) one tool result may carry."""


@dataclass(frozen=True)
class ResultFile:
    """A file a tool result carries (image or audio content, an embedded resource), decoded:
    the worker stores it as an asset of the run."""

    data: bytes
    media_type: str | None  # as the server declared it
    filename: str


def split_result(result: types.CallToolResult, tool: str) -> tuple[JSONValue, list[ResultFile]]:
    """A tool result as one JSON value (`tool_output` of its other content) and the files it
    carries, in order; McpCallFailed if one is not valid base64 or there are too many."""
    files: list[ResultFile] = []
    rest: list[types.ContentBlock] = []
    for block in result.content:
        if isinstance(block, types.ImageContent | types.AudioContent):
            data = _decoded(block.data, tool)
            files.append(ResultFile(data, block.mimeType, _name(tool, len(files), block.mimeType)))
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.BlobResourceContents):
                data = _decoded(resource.blob, tool)
            else:
                data = resource.text.encode("utf-8", "surrogatepass")
            named = unquote(urlsplit(str(resource.uri)).path.rsplit("/", 1)[-1])
            files.append(
                ResultFile(
                    data,
                    resource.mimeType,
                    named or _name(tool, len(files), resource.mimeType),
                )
            )
        else:
            rest.append(block)
        if len(files) > MAX_FILES:
            raise McpCallFailed(
                f"MCP tool {tool!r} returned more than {MAX_FILES} files (images, audio, "
                "resources) in one result; ask it for fewer"
            )
    if not files:
        return tool_output(result), []
    return tool_output(result.model_copy(update={"content": rest})), files


def with_files(output: JSONValue, files: list[dict[str, Any]]) -> JSONValue:
    """A step's output once the files of its result are stored: under `assets`, beside the
    tool's own object; the tool's value under `result` when it is not an object or has an
    `assets` key of its own."""
    if not files:
        return output
    listed: JSONValue = list(files)
    if isinstance(output, dict) and "assets" not in output:
        return {**output, "assets": listed}
    return {"result": output, "assets": listed}


def _decoded(data: str, tool: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise McpCallFailed(
            f"MCP tool {tool!r} returned content that is not valid base64"
        ) from None


def _name(tool: str, index: int, media_type: str | None) -> str:
    """A file's name when the result gives none: the tool's, numbered, with an extension."""
    extension = mimetypes.guess_extension(media_type.split(";")[0].strip()) if media_type else None
    return f"{tool}-{index + 1}{extension or ''}"
