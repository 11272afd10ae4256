"""Queueing one occurrence and queueing a batch leave the same rows behind.

The single-occurrence statement exists only to shorten an idle worker's pickup;
if it drifted from the batch statement, run-now and scheduled work would differ.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from pao import db as pao_db
from pao.store.queue import QueueRequest, queue, queue_many
from pao.vocabulary import QueueReason
from tests.helpers import new_agent

AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def _agent(db: psycopg.Connection[Any]) -> uuid.UUID:
    new_agent(db.info.dsn, ["admin"], name="queuer")
    row = db.execute("SELECT id FROM agents WHERE name = 'queuer'").fetchone()
    assert row is not None
    owner: uuid.UUID = row[0]
    return owner


def _task(db: psycopg.Connection[Any], owner: uuid.UUID) -> uuid.UUID:
    """A task under a concurrency key, so that the key's columns are compared too."""
    row = db.execute(
        "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, payload, "
        "concurrency_key, concurrency_limit) "
        "VALUES (%s, 't', 'event', 'e', 'UTC', '{}'::jsonb, 'k', 2) RETURNING id",
        (owner,),
    ).fetchone()
    assert row is not None
    task_id: uuid.UUID = row[0]
    return task_id


def _request(task_id: uuid.UUID, at: datetime) -> QueueRequest:
    return QueueRequest(
        task_id=task_id,
        nominal_at=at,
        scheduled_for=at + timedelta(seconds=5),
        priority=3,
        reason=QueueReason.RUN_NOW,
        detail="by hand",
    )


def _trail(db: psycopg.Connection[Any], task_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """Everything queueing wrote for a task, without ids and clock readings."""
    return db.execute(
        "SELECT d.scheduled_for - o.nominal_at, d.run_after = d.scheduled_for, d.priority,"
        "       d.reason, d.event_id, d.claim_key, d.claim_limit, d.state, d.attempt,"
        "       r.task_id = d.task_id, r.attempt, r.status, r.scheduled_for = d.scheduled_for,"
        "       r.steps, o.decision, o.detail"
        " FROM due_work d JOIN runs r ON r.due_work_id = d.id"
        " JOIN occurrences o ON o.due_work_id = d.id"
        " WHERE d.task_id = %s",
        (task_id,),
    ).fetchall()


def test_one_occurrence_is_queued_as_a_batch_of_one_would_be(
    db: psycopg.Connection[Any],
) -> None:
    db.autocommit = True
    owner = _agent(db)
    alone, batched = _task(db, owner), _task(db, owner)

    async def go() -> tuple[Any, Any, Any, list[Any], list[str]]:
        conn = await pao_db.connect(db.info.dsn, autocommit=True)
        try:
            listener = await psycopg.AsyncConnection.connect(db.info.dsn, autocommit=True)
            await listener.execute("LISTEN pao_work")
            one = await queue(conn, _request(alone, AT))
            notes = listener.notifies(timeout=2.0, stop_after=1)
            heard = [n.channel async for n in notes]
            again = await queue(conn, _request(alone, AT))  # the same occurrence
            missing = await queue(conn, _request(uuid.uuid4(), AT))  # no such task
            many = await queue_many(conn, [_request(batched, AT)])
            await listener.close()
            return one, again, missing, many, heard
        finally:
            await conn.close()

    one, again, missing, many, heard = asyncio.run(go())
    assert one is not None
    assert (one.task_id, one.status, one.attempt) == (alone, "queued", 1)
    assert one.scheduled_for == AT + timedelta(seconds=5)
    assert heard == ["pao_work"]  # idle workers are woken at commit
    assert again is None
    assert missing is None
    assert [run.task_id for run in many] == [batched]
    assert _trail(db, alone) == _trail(db, batched)
    assert len(_trail(db, alone)) == 1
    assert _trail(db, alone)[0][5:7] == (f"key/{owner}/k", 2)
