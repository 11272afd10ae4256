"""pao's side of the comparison, run as a process of its own like each peer's side script.

    python -m bench.peers.pao_side enqueue|fill|pickup URL TASK_ID [N] [BATCH]

The harness starts a fresh process for every call, for pao as for the peers:
timing a job's pickup inside the long-lived harness process would charge pao
for the harness's own heap (its collector walks everything the earlier
workloads left behind) where the peers' figures come from a fresh process.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.peers.side_common import emit, pickup, timed_enqueue
from pao.db import connect
from pao.models import Task
from pao.store.queue import QueueRequest, queue, queue_many
from pao.store.tasks import get_task


def request(task: Task, at: datetime) -> QueueRequest:
    return QueueRequest.of(task, at, "run_now", detail="bench")


def batch_of(task: Task, count: int) -> list[QueueRequest]:
    """Distinct scheduled_for per job: (task, scheduled_for) is unique."""
    now = datetime.now(UTC)
    return [request(task, now + timedelta(microseconds=i)) for i in range(count)]


# A pao job began when its step did (the step's own `started_at`, in its run's steps).
STARTED_SQL = (
    "SELECT extract(epoch FROM (steps->0->>'started_at')::timestamptz)::float8 FROM runs "
    "WHERE id = %s AND status = 'succeeded'"
)


async def main(command: str, url: str, task_id: uuid.UUID, args: list[int]) -> None:
    conn = await connect(url, autocommit=True)
    try:
        task = await get_task(conn, task_id, owner=None)
        assert task is not None
        if command == "enqueue":
            count, batch = args
            seconds = await timed_enqueue(
                count,
                batch,
                lambda: queue(conn, request(task, datetime.now(UTC))),
                lambda n: queue_many(conn, batch_of(task, n)),
            )
            emit(seconds=seconds)
        elif command == "fill":
            (count,) = args
            await queue_many(conn, batch_of(task, count))
            emit(committed_at=time.time())
        elif command == "pickup":
            (count,) = args

            async def queued(_key: str) -> uuid.UUID:
                run = await queue(conn, request(task, datetime.now(UTC)))
                assert run is not None
                return run.id

            emit(latencies_ms=await pickup(url, count, queued, STARTED_SQL))
        else:
            raise SystemExit(f"unknown command {command!r}")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], sys.argv[2], uuid.UUID(sys.argv[3]), [int(a) for a in sys.argv[4:]])
    )
