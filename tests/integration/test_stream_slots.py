"""Stream slots in PostgreSQL: an agent's cap holds across connections (replicas), a released
or lapsed slot is free again, and a renewal checks the agent's access each time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from pao import tokens
from pao.db import make_pool
from pao.store import stream_slots
from tests.helpers import SEED_TASK, auth


def test_slots_count_renew_and_release(
    client: TestClient,
    make_token: Callable[..., str],
    admin_token: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    token = make_token("tasks:read", "tasks:write", "runs:read", name="slots")
    task = client.post("/tasks", json=SEED_TASK, headers=auth(token)).json()
    row = db.execute("SELECT id FROM agents WHERE name = 'slots'").fetchone()
    assert row is not None
    agent_id, task_id = row[0], uuid.UUID(task["id"])

    async def go() -> None:
        pool = make_pool(db_url, min_size=1, max_size=4)
        await pool.open(wait=True)
        try:

            async def claim() -> stream_slots.Slot | None:
                async with pool.connection() as conn:
                    return await stream_slots.claim(conn, agent_id, cap=3, lease_seconds=60)

            async def renew(slot: stream_slots.Slot, **change: Any) -> stream_slots.Check:
                args: dict[str, Any] = {
                    "agent_id": agent_id,
                    "token_hash": tokens.token_hash(token),
                    "task_id": task_id,
                    "as_admin": False,
                    **change,
                }
                async with pool.connection() as conn:
                    return await stream_slots.renew(conn, slot, **args)

            held = await asyncio.gather(*(claim() for _ in range(5)))
            slots = [s for s in held if s is not None]
            assert len(slots) == 3  # at once, from several connections: never more than the cap
            assert len({s.key for s in slots}) == 3
            assert db.execute(
                "SELECT count(*) FROM rate_counters WHERE key LIKE 'stream:%%'"
            ).fetchone() == (3,)
            check = await renew(slots[0])
            assert check.allowed
            assert check.slot is not None
            assert check.slot.held_since > slots[0].held_since
            # The old lease start no longer proves ownership.
            assert (await renew(slots[0])).slot is None
            slots[0] = check.slot
            # Another token, another task, or an admin's view: not allowed, nothing renewed.
            assert not (await renew(slots[0], token_hash=tokens.token_hash("pao_x"))).allowed
            assert not (await renew(slots[0], task_id=uuid.uuid4())).allowed
            assert not (await renew(slots[0], as_admin=True)).allowed
            async with pool.connection() as conn:
                await stream_slots.release(conn, slots[0])
            again = await claim()
            assert again is not None
            assert again.key == slots[0].key
            # A lapsed lease (its replica died) is free again.
            db.execute("UPDATE rate_counters SET window_start = now() - interval '2 minutes'")
            assert await claim() is not None
        finally:
            await pool.close()

    asyncio.run(go())
