"""`pao api` / `python run_api.py`: serve the API with uvicorn."""

from __future__ import annotations

import asyncio

import uvicorn

from api.app import create_app
from pao.embedded import database_url
from pao.migrate import check_database
from pao.settings import Settings


def run(settings: Settings) -> int:
    url = database_url(settings.database_url, settings.data_dir)
    asyncio.run(check_database(url))
    app = create_app(settings, database_url=url)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
        # JSON lines: uvicorn's loggers go through ours, and the middleware writes the
        # access lines, which carry the request's ids.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=settings.log_format != "json",
    )
    return 0
