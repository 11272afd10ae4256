"""`pao worker`: run the worker until SIGTERM (drain) or a second signal (stop now)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

from pao import collector, db, eventloop
from pao.embedded import database_url
from pao.migrate import check_database
from pao.probe_server import serve_metrics
from pao.settings import Settings
from pao.vocabulary import ProcessKind
from worker import metrics
from worker.service import CLOSE_SECONDS, Worker


async def _main(settings: Settings, url: str) -> None:
    await check_database(url)
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        # The first signal drains; a second one hands everything back at once.
        if not stop.is_set():
            _last_resort(settings)
        (force if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # Queries are short and no step holds a connection, so a smaller pool only queues them.
    size = settings.worker_pool_size or settings.worker_concurrency * 2 + 2
    pool = db.make_pool(
        url,
        min_size=min(2, size),
        max_size=size,
        name=ProcessKind.WORKER,
        trust_recent=1.0,
        prepare=not db.pooled(settings),
        plan_once=True,
    )
    await pool.open(wait=False)
    db.warn_if_polling(settings, ProcessKind.WORKER)
    server = None
    try:
        worker = Worker(settings, pool, db.listen_url(settings, url))
        if settings.metrics_port:
            metrics.enable(running=lambda: len(worker.running))
        server = await serve_metrics(settings.metrics_host, settings.metrics_port)
        collector.settle()
        await worker.serve(stop, force)
    finally:
        if server is not None:
            await server.close()
        await pool.close(timeout=1.0)


def _last_resort(settings: Settings) -> None:
    """Exit anyway once a stopping worker has overrun its grace and close by far.

    The worker's own shutdown is bounded; this only guards against what it cannot bound
    (a thread stuck in a system call, a tool that ignores cancellation). Its leases, no
    longer renewed, hand its work on as a crash's would. A thread, so a stuck loop
    cannot hold it up.
    """
    limit = settings.shutdown_grace_seconds + CLOSE_SECONDS + 5.0

    def exit_now() -> None:
        print(f"worker still running {limit:.0f}s after SIGTERM; exiting now", file=sys.stderr)
        os._exit(1)

    timer = threading.Timer(limit, exit_now)
    timer.daemon = True
    timer.start()


def run(settings: Settings) -> int:
    url = database_url(settings.database_url, settings.data_dir)
    eventloop.run(_main(settings, url))
    return 0
