"""The writer of run ends writes every end it was given, whoever still waits for it.

A run waits for its end to be written without shielding the wait: if that wait is
cancelled, the end must be written all the same, and the ends batched with it too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from pao import db as pao_db
from pao.store import work
from pao.vocabulary import RunStatus
from tests.helpers import queue_noop_runs
from worker.outcomes import End, Outcomes

WORKER = "worker-under-test"


async def _end_three_cancelling_one_wait(db_url: str) -> list[bool | None]:
    pool = pao_db.make_pool(db_url, min_size=1, max_size=2, name="test")
    await pool.open()
    try:
        async with pao_db.statement(pool) as conn:
            started = await work.claim_unkeyed(conn, worker_id=WORKER, limit=10, lease_seconds=30)
            claimed = [c for c, _ in started.claimed]
            tasks, _ = await work.rows_for(conn, list({c.task_id for c in claimed}), [])
        assert len(claimed) == 3
        outcomes = Outcomes(pool, WORKER)
        waits = [
            asyncio.create_task(
                outcomes.end(
                    End(
                        work.Lease(c.id, c.attempt, WORKER),
                        c.run_id,
                        tasks[c.task_id][1],
                        RunStatus.SUCCEEDED,
                        [],
                    )
                )
            )
            for c in claimed
        ]
        await asyncio.sleep(0)  # each end is queued; nothing is written yet (no writer)
        waits[0].cancel()
        writer = asyncio.create_task(outcomes.run())
        results: list[bool | None] = []
        for wait in waits:
            try:
                results.append(await wait)
            except asyncio.CancelledError:
                results.append(None)
        outcomes.close()
        await asyncio.wait_for(writer, timeout=10)
        return results
    finally:
        await pool.close()


def test_an_end_is_written_though_its_wait_was_cancelled(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    queue_noop_runs(db_url, db, 3)
    results = asyncio.run(_end_three_cancelling_one_wait(db_url))
    assert results == [None, True, True]
    ended = db.execute(
        "SELECT r.status, d.state, d.lease_owner "
        "FROM runs r JOIN due_work d ON d.id = r.due_work_id"
    ).fetchall()
    assert ended == [("succeeded", "succeeded", None)] * 3
