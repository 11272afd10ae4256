"""procrastinate's side of the comparison (run by bench/peers/run.py under .bench-venv's Python).

    python procrastinate_side.py setup|enqueue|fill|worker|pickup URL [N] [BATCH]

Its recommended fast path: async tasks, one worker with `concurrency` jobs at a
time (WORKER_CONCURRENCY), LISTEN/NOTIFY on (the default), finished jobs kept
(`delete_jobs` left at "never", as pao keeps its runs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import procrastinate
from side_common import StartMarks, create_start_table, emit, pickup, timed_enqueue

# Jobs one worker process runs at once (procrastinate's default is 1; its docs recommend more
# for async tasks); PROCRASTINATE_CONCURRENCY overrides it.
WORKER_CONCURRENCY = int(os.environ.get("PROCRASTINATE_CONCURRENCY", "10"))


def make_app(url: str) -> tuple[procrastinate.App, procrastinate.Task, procrastinate.Task]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    marks = StartMarks(url)

    @app.task(name="noop")
    async def noop() -> None:
        pass

    @app.task(name="mark")
    async def mark(key: str) -> None:
        await marks.mark(key)

    return app, noop, mark


async def main(command: str, url: str, args: list[int]) -> None:
    logging.basicConfig(level=logging.WARNING)
    # It warns that an app defined in __main__ cannot be found by its CLI: not used here.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app, noop, mark = make_app(url)
    async with app.open_async():
        if command == "setup":
            await app.schema_manager.apply_schema_async()
            await create_start_table(url)
        elif command == "enqueue":
            count, batch = args
            seconds = await timed_enqueue(
                count,
                batch,
                lambda: noop.defer_async(),
                lambda n: noop.batch_defer_async(*([{}] * n)),
            )
            emit(seconds=seconds)
        elif command == "fill":
            (count,) = args
            await noop.batch_defer_async(*([{}] * count))
            emit(committed_at=time.time())
        elif command == "worker":
            await app.run_worker_async(concurrency=WORKER_CONCURRENCY, wait=True)
        elif command == "pickup":
            (count,) = args

            async def marked(key: str) -> str:
                await mark.defer_async(key=key)
                return key

            emit(latencies_ms=await pickup(url, count, marked))
        else:
            raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]]))
