"""`pao worker`: run the worker until SIGTERM (drain) or a second signal (stop now)."""

from __future__ import annotations

import asyncio
import signal

from pao import collector, db, eventloop
from pao.embedded import database_url
from pao.metrics import serve_metrics
from pao.migrate import check_database
from pao.settings import Settings
from worker import metrics
from worker.service import Worker


async def _main(settings: Settings, url: str) -> None:
    await check_database(url)
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        # The first signal drains; a second one hands everything back at once.
        (force if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # Queries are short and no step holds a connection, so a smaller pool only queues them.
    size = settings.worker_pool_size or settings.worker_concurrency * 2 + 2
    pool = db.make_pool(url, min_size=min(2, size), max_size=size, name="worker", trust_recent=1.0)
    await pool.open(wait=False)
    server = None
    try:
        worker = Worker(settings, pool, url)
        if settings.metrics_port:
            metrics.enable(running=lambda: len(worker.running))
        server = await serve_metrics(settings.metrics_host, settings.metrics_port)
        collector.settle()
        await worker.serve(stop, force)
    finally:
        if server is not None:
            await server.close()
        await pool.close()


def run(settings: Settings) -> int:
    url = database_url(settings.database_url, settings.data_dir)
    eventloop.run(_main(settings, url))
    return 0
