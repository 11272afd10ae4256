"""`assets` and `asset_chunks`: uploaded files and their bytes (`pao.domain.assets` decides)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncCopy

from pao.db import Conn, model_row
from pao.models import Asset
from pao.sql import QUERIES


@dataclass(frozen=True)
class NewAsset:
    id: uuid.UUID
    created_by: uuid.UUID
    label: str
    filename: str
    media_type: str
    size: int
    sha256: bytes
    tags: list[str]
    status: str
    chunk_bytes: int
    run_id: uuid.UUID | None
    task_id: uuid.UUID | None
    step_id: str | None = None


@dataclass(frozen=True)
class RunOwner:
    created_by: uuid.UUID
    task_id: uuid.UUID
    step_id: str | None = None  # the step the caller holds a claim on, if it does


@dataclass(frozen=True)
class RunAsset:
    """An asset as a run lists it."""

    id: uuid.UUID
    filename: str
    media_type: str
    size: int
    sha256: bytes
    step_id: str | None
    created_at: datetime


async def insert(conn: Conn, new: NewAsset) -> Asset:
    async with conn.cursor(row_factory=model_row(Asset)) as cur:
        await cur.execute(QUERIES["asset_insert"], new.__dict__)
        row = await cur.fetchone()
    assert row is not None
    return row


@asynccontextmanager
async def copy_chunks(conn: Conn) -> AsyncIterator[AsyncCopy]:
    """A binary COPY into asset_chunks: `await copy.write_row((asset_id, seq, data))`.

    Rows stream to the server as they are written, with no round trip per chunk.
    """
    async with conn.cursor() as cur, cur.copy(QUERIES["asset_chunks_copy"]) as copy:
        copy.set_types(["uuid", "int4", "bytea"])
        yield copy


async def take_upload_slot(conn: Conn, agent_id: uuid.UUID, *, cap: int) -> int | None:
    """One of the agent's `cap` upload slots (1..cap), held until this transaction ends;
    None if every one is held, by this replica or another."""
    cur = await conn.execute(QUERIES["asset_upload_slot"], {"agent_id": agent_id, "cap": cap})
    row = await cur.fetchone()
    assert row is not None
    slot = row["slot"]
    return None if slot is None else int(slot)


async def get(
    conn: Conn, asset_id: uuid.UUID, *, owner: uuid.UUID | None, claimer: uuid.UUID | None = None
) -> Asset | None:
    """The asset if `owner` (None: anyone) owns it, or it is an input of a remote step that
    `claimer` holds a live claim on."""
    async with conn.cursor(row_factory=model_row(Asset)) as cur:
        await cur.execute(
            QUERIES["asset_get"], {"id": asset_id, "owner": owner, "claimer": claimer}
        )
        return await cur.fetchone()


async def get_many(
    conn: Conn, ids: list[uuid.UUID], *, owner: uuid.UUID | None
) -> dict[uuid.UUID, Asset]:
    """Those of the assets `ids` that `owner` (None: anyone) owns, by id."""
    if not ids:
        return {}
    async with conn.cursor(row_factory=model_row(Asset)) as cur:
        await cur.execute(QUERIES["asset_get_many"], {"ids": ids, "owner": owner})
        return {a.id: a for a in await cur.fetchall()}


async def list_for_run(conn: Conn, run_id: uuid.UUID, *, limit: int) -> list[RunAsset]:
    async with conn.cursor(row_factory=model_row(RunAsset)) as cur:
        await cur.execute(QUERIES["asset_list_for_run"], {"run_id": run_id, "limit": limit})
        return await cur.fetchall()


async def list_page(
    conn: Conn,
    *,
    owner: uuid.UUID | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    tag: str | None,
    label: str | None,
    media_type: str | None,
    media_prefix: str | None,
    run_id: uuid.UUID | None,
    task_id: uuid.UUID | None,
) -> list[Asset]:
    params: dict[str, Any] = {
        "owner": owner,
        "limit": limit,
        "after_created": after[0] if after else None,
        "after_id": after[1] if after else None,
        "tag": tag,
        "label": label,
        "media_type": media_type,
        "media_prefix": media_prefix,
        "run_id": run_id,
        "task_id": task_id,
    }
    async with conn.cursor(row_factory=model_row(Asset)) as cur:
        # Planned for its own filters, as run_list (pao/sql/runs.sql) says.
        await cur.execute(QUERIES["asset_list"], params, prepare=False)
        return await cur.fetchall()


async def delete(conn: Conn, asset_id: uuid.UUID, *, owner: uuid.UUID | None) -> bool:
    """True if there was such an asset (and it is gone with its chunks)."""
    cur = await conn.execute(QUERIES["asset_delete"], {"id": asset_id, "owner": owner})
    return await cur.fetchone() is not None


async def read_chunk(
    conn: Conn, asset_id: uuid.UUID, seq: int, *, offset: int, count: int
) -> bytes | None:
    """`count` bytes of chunk `seq` from `offset` (0-based); None if the chunk is gone."""
    async with conn.cursor(binary=True) as cur:
        await cur.execute(
            QUERIES["asset_chunk_read"],
            {"asset_id": asset_id, "seq": seq, "offset": offset + 1, "count": count},
        )
        row = await cur.fetchone()
    return None if row is None else bytes(row["data"])


async def usage(conn: Conn, agent_id: uuid.UUID) -> int:
    """The bytes `agent_id` keeps in assets."""
    cur = await conn.execute(QUERIES["asset_usage_get"], {"agent_id": agent_id})
    row = await cur.fetchone()
    assert row is not None
    return int(row["bytes"])


@dataclass(frozen=True)
class UsageBytes:
    """The bytes an agent keeps, and of those the bytes created in a day and a month."""

    kept: int
    day_added: int
    month_added: int


async def usage_windows(
    conn: Conn,
    agent_id: uuid.UUID,
    *,
    day: tuple[datetime, datetime],
    month: tuple[datetime, datetime],
) -> UsageBytes:
    """`usage`, and the bytes of the assets it keeps created in `day` and `month`
    ([start, end) each)."""
    cur = await conn.execute(
        QUERIES["asset_usage_windows"],
        {
            "agent_id": agent_id,
            "day": day[0],
            "day_end": day[1],
            "month": month[0],
            "month_end": month[1],
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return UsageBytes(int(row["kept"]), int(row["day_added"]), int(row["month_added"]))


async def run_owner(
    conn: Conn, run_id: uuid.UUID, *, owner: uuid.UUID | None, caller: uuid.UUID
) -> RunOwner | None:
    async with conn.cursor(row_factory=model_row(RunOwner)) as cur:
        await cur.execute(
            QUERIES["asset_run_owner"], {"run_id": run_id, "owner": owner, "caller": caller}
        )
        return await cur.fetchone()


async def server_secret(conn: Conn, name: str, candidate: bytes) -> bytes:
    """The named shared secret; `candidate` becomes it if none was made before."""
    await conn.execute(QUERIES["server_secret_ensure"], {"name": name, "value": candidate})
    cur = await conn.execute(QUERIES["server_secret_get"], {"name": name})
    row = await cur.fetchone()
    assert row is not None
    return bytes(row["value"])
