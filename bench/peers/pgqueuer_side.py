"""pgqueuer's side of the comparison (run by bench/peers/run.py under .bench-venv's Python).

    python pgqueuer_side.py setup|enqueue|fill|worker|pickup URL [N] [BATCH]

Its recommended fast path: the asyncpg driver, uvloop (as its own CLI uses),
async entrypoints, and a dequeue batch of DEQUEUE_BATCH jobs per round trip.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import asyncpg
import uvloop
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job
from side_common import StartMarks, create_start_table, emit, pickup, timed_enqueue

# Jobs taken per dequeue (pgqueuer's default is 10); PGQUEUER_BATCH overrides it.
DEQUEUE_BATCH = int(os.environ.get("PGQUEUER_BATCH", "250"))


async def connect(url: str) -> asyncpg.Connection:
    # asyncpg does not read PGAPPNAME; the harness names worker connections with it.
    name = os.environ.get("PGAPPNAME", "")
    return await asyncpg.connect(url, server_settings={"application_name": name})


async def queries(url: str) -> Queries:
    return Queries(AsyncpgDriver(await connect(url)))


async def main(command: str, url: str, args: list[int]) -> None:
    if command == "setup":
        await (await queries(url)).install()
        await create_start_table(url)
    elif command == "enqueue":
        count, batch = args
        q = await queries(url)
        seconds = await timed_enqueue(
            count,
            batch,
            lambda: q.enqueue("noop", None),
            lambda n: q.enqueue(["noop"] * n, [None] * n, [0] * n),
        )
        emit(seconds=seconds)
    elif command == "fill":
        (count,) = args
        q = await queries(url)
        await q.enqueue(["noop"] * count, [None] * count, [0] * count)
        emit(committed_at=time.time())
    elif command == "worker":
        marks = StartMarks(url)
        qm = QueueManager(await queries(url))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            pass

        @qm.entrypoint("mark")
        async def mark(job: Job) -> None:
            assert job.payload is not None
            await marks.mark(job.payload.decode())

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        await qm.run(batch_size=DEQUEUE_BATCH)
    elif command == "pickup":
        (count,) = args
        q = await queries(url)

        async def marked(key: str) -> str:
            await q.enqueue("mark", key.encode())
            return key

        emit(latencies_ms=await pickup(url, count, marked))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]]))
