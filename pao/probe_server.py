"""The small HTTP server the scheduler and the worker answer probes and scrapes on.

It runs on the process's own event loop, not on a thread: `/health/live`
answers only while that loop turns, so a wedged process fails its liveness
probe instead of looking healthy from a side thread. Each process defines its
own metrics in its package; this module only serves whatever the registry holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 5.0
MAX_HEADER_LINES = 100
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}


class MetricsServer:
    """`GET /metrics` (Prometheus text format) and `GET /health/live` on one port."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Loaded here, not at import: a process with metrics off never loads the library.
        from prometheus_client import REGISTRY

        self.registry = registry or REGISTRY
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int | None:
        """The port actually bound (useful with port 0 in tests), or None when not serving."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> bool:
        """Listen on host:port; False (logged, the process carries on) if the port is taken.

        A process without its metrics port still does its work; its liveness
        probe, which uses the same port, is what reports the problem.
        """
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            log.error(
                "cannot serve metrics on %s:%s (%s); set PAO_METRICS_PORT to a free port, "
                "or 0 to turn metrics off",
                host,
                port,
                exc.strerror or exc,
            )
            return False
        log.info("metrics on http://%s:%s/metrics", host, self.port)
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                status, content_type, body, head = await self._answer(reader)
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                    f"Content-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + (b"" if head else body)
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that went away or sent garbage gets nothing more
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        request_line = (await reader.readline()).decode("latin-1").split()
        for _ in range(MAX_HEADER_LINES):
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                break
        text = "text/plain; charset=utf-8"
        if len(request_line) != 3:
            return 400, text, b"bad request\n", False
        method, target, _version = request_line
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/health/live"):
            return 404, text, b"not found: try /metrics or /health/live\n", False
        if method not in ("GET", "HEAD"):
            return 405, text, b"use GET\n", False
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry), method == "HEAD"
        return 200, "application/json", b'{"status":"ok"}', method == "HEAD"


async def serve_metrics(host: str, port: int) -> MetricsServer | None:
    """Start the metrics server unless `port` is 0; None when it is off or could not bind."""
    if port == 0:
        return None
    server = MetricsServer()
    return server if await server.start(host, port) else None
