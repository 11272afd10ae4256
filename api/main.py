"""`pao api` / `python run_api.py`: serve the API with uvicorn."""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from pao import collector, db
from pao.embedded import database_url
from pao.migrate import check_database
from pao.settings import Settings
from pao.vocabulary import ProcessKind


class _Server(uvicorn.Server):
    """uvicorn, ending live streams as soon as shutdown begins instead of waiting them out."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        collector.settle()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        state = getattr(self.app.state, "pao", None)
        if state is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(state.streams.stop_all)


def run(settings: Settings) -> int:
    url = database_url(settings.database_url, settings.data_dir)
    asyncio.run(check_database(url))
    db.warn_if_polling(settings, ProcessKind.API)
    app = create_app(settings, database_url=url)
    json_logs = settings.log_format == "json"
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # X-Forwarded-For / -Proto are believed from these peers only (the ingress or load
        # balancer): the failed sign-in limit is then kept per client, not per proxy.
        proxy_headers=True,
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
        timeout_graceful_shutdown=10,
        # JSON lines: uvicorn's loggers go through ours, and the middleware writes the
        # access lines, which carry the request's ids.
        log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG,
        access_log=not json_logs,
    )
    server = _Server(config, app)
    server.run()
    return 0 if server.started else 1
