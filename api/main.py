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
    )
    return 0
