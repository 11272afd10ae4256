"""`pao scheduler`: run the scheduler until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from pao import db, eventloop
from pao.embedded import database_url
from pao.migrate import check_database
from pao.probe_server import serve_metrics
from pao.settings import Settings
from scheduler.service import Scheduler


async def _main(settings: Settings, url: str) -> None:
    await check_database(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = db.make_pool(
        url, min_size=1, max_size=4, name="scheduler", prepare=not db.pooled(settings)
    )
    await pool.open(wait=False)
    server = await serve_metrics(settings.metrics_host, settings.metrics_port)
    try:
        await Scheduler(settings, pool).serve(stop)
    finally:
        if server is not None:
            await server.close()
        await pool.close(timeout=1.0)


def run(settings: Settings) -> int:
    url = database_url(settings.database_url, settings.data_dir)
    eventloop.run(_main(settings, url))
    return 0
