"""Assets: files that runs consume and produce, stored in PostgreSQL.

An upload is written inside its caller's transaction: the bytes stream into
`asset_chunks` (binary COPY, `CHUNK_BYTES` a row) while their SHA-256 and size are
computed, then the `assets` row is inserted. Anything that stops it (a dropped
connection, a body over `PAO_ASSET_MAX_BYTES`, a quota, a declared type the bytes
contradict) raises, and the rollback leaves no row and no chunk. Memory stays at
about one chunk per upload, whatever the file's size.

The quota is kept by triggers in `asset_usage`; inserting an asset locks its
owner's row there until commit, so the check after the insert sees every upload
committed before it and none can slip past in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType

from psycopg import AsyncCopy

from pao import media, pagination
from pao.asset_inputs import MAX_STEP_ASSETS, AssetField, media_matches, not_an_id
from pao.db import Conn
from pao.errors import (
    AssetInputRefused,
    FieldError,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    RateLimited,
    TooLarge,
)
from pao.models import Agent, Asset
from pao.store import assets as store
from pao.store.assets import RunAsset
from pao.visibility import owner_filter
from pao.vocabulary import AssetStatus, Scope

CHUNK_BYTES = 1 << 20
"""Bytes per stored chunk: large enough that a GiB is a thousand rows, small enough that
an upload or a download holds about one in memory."""
WRITE_AHEAD = 2
"""Chunks queued for the database while the next ones arrive: the client's bytes and the
database's writes overlap (each alone is about as slow as both), and an upload holds
at most this many chunks, plus the one filling, in memory."""
MAX_LABEL = 200
MAX_TAGS = 32
MAX_TAG = 64
_TAG = re.compile(r"^[^\x00-\x1f\x7f,]{1,64}$")
LINK_SECRET_NAME = "asset_links"  # noqa: S105 (the secret's name in server_secrets)


@dataclass(frozen=True)
class Limits:
    """PAO_ASSET_MAX_BYTES and PAO_ASSET_QUOTA_BYTES."""

    max_bytes: int
    quota_bytes: int


@dataclass
class AssetFields:
    """What is said of an upload besides its bytes (all checked by `check_fields`)."""

    label: str = ""
    filename: str = ""
    tags: list[str] = field(default_factory=list)
    declared_type: str | None = None
    run_id: uuid.UUID | None = None
    step_id: str | None = None  # the step of `run_id` that makes it (a worker saving output)


def check_label(label: str, loc: tuple[str | int, ...] = ("label",)) -> str:
    if len(label) > MAX_LABEL or any(ord(c) < 32 or ord(c) == 0x7F for c in label):
        raise InvalidInput.one(
            loc, f"must be at most {MAX_LABEL} characters, with no control characters"
        )
    return label


def split_tags(values: Iterable[str], loc: tuple[str | int, ...] = ("tags",)) -> list[str]:
    """Tags given comma-separated, repeated, or both: trimmed, without empties or repeats."""
    tags: list[str] = []
    for value in values:
        for part in value.split(","):
            tag = part.strip()
            if not tag or tag in tags:
                continue
            if not _TAG.match(tag):
                raise InvalidInput.one(
                    loc,
                    f"tag {tag[:80]!r} must be 1 to {MAX_TAG} characters, with no control "
                    "characters or commas",
                )
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise InvalidInput.one(loc, f"at most {MAX_TAGS} tags are allowed, got {len(tags)}")
    return tags


async def find_run_owner(conn: Conn, actor: Agent, run_id: uuid.UUID) -> store.RunOwner:
    """The owner and task of a run `actor` may attach an asset to: one it may see, or one
    with a step it holds a live claim on (a remote worker's output). 422 otherwise."""
    found = await store.run_owner(conn, run_id, owner=owner_filter(actor), caller=actor.id)
    if found is None:
        raise InvalidInput.one(("run_id",), f"no run {run_id}")
    return found


async def hold_upload_slot(conn: Conn, uploader: uuid.UUID, *, cap: int) -> None:
    """Count this upload against its uploader's PAO_UPLOADS_PER_AGENT, on every API replica,
    until its transaction (`conn`'s, open) ends; RateLimited (429) if all are in use."""
    if await store.take_upload_slot(conn, uploader, cap=cap) is None:
        raise RateLimited(
            f"this agent already has {cap} uploads in progress (PAO_UPLOADS_PER_AGENT), on "
            "this server or another; wait for one to end",
            retry_after=1,
        )


class AssetWriter:
    """One upload, streamed into the caller's transaction.

        async with AssetWriter(conn, actor, limits, declared_type=...) as writer:
            async for data in body:
                await writer.write(data)
            asset = await writer.finish(fields)

    Leaving the block by an exception abandons the COPY; the caller's rollback then
    removes every chunk written. `owner` is whose quota is checked while the bytes
    come (the actor, or the run's owner when known); `finish` checks the real owner's.
    """

    def __init__(
        self,
        conn: Conn,
        actor: Agent,
        limits: Limits,
        *,
        declared_type: str | None = None,
        owner: uuid.UUID | None = None,
        type_loc: tuple[str | int, ...] = ("file",),
        strict_type: bool = True,
    ) -> None:
        self.conn = conn
        self.actor = actor
        self.limits = limits
        self.declared_type = declared_type
        self.owner = owner or actor.id
        self.type_loc = type_loc
        # False: a declared type the bytes contradict is dropped, not refused (a web server's
        # Content-Type, an MCP tool's mimeType: nobody to send the right one again).
        self.strict_type = strict_type
        self.id = uuid.uuid4()
        self.size = 0
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._seq = 0
        self._head = b""
        self._media_type: str | None = None
        self._used = 0
        self._stack = AsyncExitStack()
        self._copy: AsyncCopy | None = None
        self._queue: asyncio.Queue[tuple[int, memoryview] | None] = asyncio.Queue(WRITE_AHEAD)
        self._drain: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AssetWriter:
        self._used = await store.usage(self.conn, self.owner)
        self._check_quota()
        self._copy = await self._stack.enter_async_context(store.copy_chunks(self.conn))
        self._drain = asyncio.create_task(self._send(self._copy), name="asset-copy")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _send(self, copy: AsyncCopy) -> None:
        """The COPY's side: write queued chunks as the database takes them."""
        while (item := await self._queue.get()) is not None:
            await copy.write_row((self.id, item[0], item[1]))

    async def _put(self, item: tuple[int, memoryview] | None) -> None:
        """Queue a chunk (None: the end), waiting while WRITE_AHEAD are queued; the COPY's
        error, if it failed meanwhile."""
        assert self._drain is not None
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self._drain}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
        if self._drain.done():
            self._drain.result()  # raises what stopped it

    def _check_quota(self) -> None:
        quota = self.limits.quota_bytes
        if self._used + self.size > quota:
            raise QuotaExceeded(
                f"this upload would take its owner's assets past PAO_ASSET_QUOTA_BYTES "
                f"({quota} bytes; {self._used} in use): delete assets it no longer needs"
            )

    async def write(self, data: bytes) -> None:
        """Take the next bytes of the file; TooLarge or QuotaExceeded as soon as it is."""
        if not data:
            return
        self.size += len(data)
        if self.size > self.limits.max_bytes:
            raise TooLarge(
                f"the file is larger than PAO_ASSET_MAX_BYTES ({self.limits.max_bytes} bytes); "
                "nothing was stored"
            )
        self._check_quota()
        self._hash.update(data)
        if self._media_type is None:
            self._head += data[: media.SNIFF_BYTES - len(self._head)]
            if len(self._head) >= media.SNIFF_BYTES:
                self._settle_type()
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= CHUNK_BYTES:
            await self._flush(final=False)

    def _settle_type(self) -> None:
        """Sniff the head and hold it against the declared type (a 422 before the rest)."""
        sniffed = media.sniff(self._head)
        try:
            self._media_type = media.settle(sniffed, self.declared_type, self.type_loc)
        except InvalidInput:
            if self.strict_type:
                raise
            self._media_type = sniffed
        self._head = b""

    async def _flush(self, *, final: bool) -> None:
        data = b"".join(self._pending) if len(self._pending) != 1 else self._pending[0]
        view = memoryview(data)
        start = 0
        while len(view) - start >= CHUNK_BYTES or (final and start < len(view)):
            end = min(start + CHUNK_BYTES, len(view))
            await self._put((self._seq, view[start:end]))
            self._seq += 1
            start = end
        rest = bytes(view[start:]) if start < len(view) else b""
        self._pending = [rest] if rest else []
        self._pending_size = len(rest)

    async def finish(self, fields: AssetFields) -> Asset:
        """End the upload: write what is left, insert the asset row, check the quota."""
        if self._media_type is None:
            self._settle_type()
        assert self._media_type is not None
        await self._flush(final=True)
        await self._put(None)
        assert self._drain is not None
        await self._drain
        await self._stack.aclose()  # ends the COPY
        run_owner = None
        if fields.run_id is not None:
            run_owner = await find_run_owner(self.conn, self.actor, fields.run_id)
        owner = run_owner.created_by if run_owner else self.actor.id
        asset = await store.insert(
            self.conn,
            store.NewAsset(
                id=self.id,
                created_by=owner,
                label=fields.label,
                filename=media.safe_filename(fields.filename),
                media_type=self._media_type,
                size=self.size,
                sha256=self._hash.digest(),
                tags=fields.tags,
                status=AssetStatus.READY,
                chunk_bytes=CHUNK_BYTES,
                run_id=fields.run_id,
                task_id=run_owner.task_id if run_owner else None,
                step_id=fields.step_id or (run_owner.step_id if run_owner else None),
            ),
        )
        # The insert's trigger locked the owner's usage row: what it says now is final.
        self._used = await store.usage(self.conn, owner) - self.size
        self._check_quota()
        return asset


async def create_asset(
    conn: Conn,
    actor: Agent,
    limits: Limits,
    chunks: AsyncIterable[bytes] | Iterable[bytes],
    fields: AssetFields,
) -> Asset:
    """Store `chunks` as one asset in the caller's transaction (see `AssetWriter`): for a
    worker saving a step's output, or any caller holding the bytes as an iterator."""
    fields.label = check_label(fields.label)
    owner = None
    if fields.run_id is not None:
        owner = (await find_run_owner(conn, actor, fields.run_id)).created_by
    async with AssetWriter(
        conn, actor, limits, declared_type=fields.declared_type, owner=owner
    ) as writer:
        if isinstance(chunks, AsyncIterable):
            async for data in chunks:
                await writer.write(data)
        else:
            for data in chunks:
                await writer.write(data)
        return await writer.finish(fields)


async def get_asset(
    conn: Conn, actor: Agent, asset_id: uuid.UUID, *, as_claimer: bool = False
) -> Asset:
    """An asset `actor` may see: its own (an admin: any). With `as_claimer` (reading it), also
    an input of a remote step `actor` holds a live claim on, if it may still claim work."""
    claimer = actor.id if as_claimer and actor.has_scope(Scope.WORK_CLAIM) else None
    asset = await store.get(conn, asset_id, owner=owner_filter(actor), claimer=claimer)
    if asset is None:
        raise NotFound(f"no asset {asset_id}")
    return asset


async def get_linked_asset(conn: Conn, asset_id: uuid.UUID) -> Asset:
    """An asset named by a genuine signed link, whoever owns it."""
    asset = await store.get(conn, asset_id, owner=None)
    if asset is None:
        raise NotFound(f"no asset {asset_id}")
    return asset


async def list_assets(
    conn: Conn,
    actor: Agent,
    *,
    limit: int,
    cursor: str | None,
    tag: str | None = None,
    label: str | None = None,
    media_type: str | None = None,
    run_id: uuid.UUID | None = None,
    task_id: uuid.UUID | None = None,
) -> tuple[list[Asset], str | None]:
    """A page of the assets `actor` may see, newest first. `media_type` may end in `/*`."""
    prefix = None
    if media_type is not None:
        if media_type.endswith("/*"):
            prefix, media_type = media_type[:-1].lower(), None
        else:
            media_type = media.canonical(media_type)
    rows = await store.list_page(
        conn,
        owner=owner_filter(actor),
        limit=limit + 1,
        after=pagination.decode_cursor(cursor),
        tag=tag,
        label=label,
        media_type=media_type,
        media_prefix=prefix,
        run_id=run_id,
        task_id=task_id,
    )
    return pagination.page(rows, limit, lambda a: pagination.encode_cursor(a.created_at, a.id))


async def delete_asset(conn: Conn, actor: Agent, asset_id: uuid.UUID) -> None:
    if not await store.delete(conn, asset_id, owner=owner_filter(actor)):
        raise NotFound(f"no asset {asset_id}")


ConnectionSource = Callable[[], AbstractAsyncContextManager[Conn]]


async def read_bytes(
    connect: ConnectionSource, asset: Asset, start: int, end: int
) -> AsyncIterator[bytes]:
    """Bytes `start` to `end` (exclusive) of `asset`, a chunk at a time, each read on a
    connection of its own from `connect`: a slow reader holds no transaction open. The
    next chunk is read while the last one is sent (one chunk ahead, no more).

    Stops with NotFound if the asset is deleted while it is read (the response, already
    begun, is then cut short, which its Content-Length lets the client see).
    """

    async def fetch(position: int) -> bytes:
        seq, offset = divmod(position, asset.chunk_bytes)
        count = min(asset.chunk_bytes - offset, end - position)
        async with connect() as conn:
            data = await store.read_chunk(conn, asset.id, seq, offset=offset, count=count)
        if data is None or len(data) != count:
            raise NotFound(f"asset {asset.id} was deleted while it was read")
        return data

    position = start
    ahead: asyncio.Task[bytes] | None = None
    try:
        while position < end:
            data = await (ahead if ahead is not None else fetch(position))
            ahead = None
            position += len(data)
            if position < end:
                ahead = asyncio.create_task(fetch(position))
            yield data
    finally:
        if ahead is not None and not ahead.done():
            ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ahead


async def link_key(conn: Conn, configured: str | None) -> bytes:
    """The key signed links are made with: PAO_ASSET_LINK_SECRET's, else one kept in the
    database (made by whichever replica asks first), so every replica agrees."""
    if configured:
        return hashlib.sha256(b"pao-asset-links\0" + configured.encode()).digest()
    return await store.server_secret(conn, LINK_SECRET_NAME, secrets.token_bytes(32))


# Assets in pipelines ---------------------------------------------------------------------

RUN_ASSETS_LISTED = 100
"""How many of its assets a run shows (GET /assets?run_id= pages through all of them)."""

Loc = tuple[str | int, ...]


async def check_step_inputs(
    conn: Conn, owner: Agent, fields: list[tuple[Loc, AssetField]], *, whose: str
) -> list[Asset]:
    """The assets `fields` name (each at its location), in order: every one must exist, be one
    `owner` may use in its steps (its own; an admin's steps may use any) and be of a media
    type its field takes. Otherwise AssetInputRefused naming each field, the same words for
    an asset that does not exist and one that is another agent's; `whose` says who `owner`
    is ("this agent", "the task's owner (agent 'x')")."""
    if len(fields) > MAX_STEP_ASSETS:
        loc, first = fields[MAX_STEP_ASSETS]
        raise AssetInputRefused(
            [
                FieldError(
                    (*loc, *first.path),
                    f"a step may name at most {MAX_STEP_ASSETS} assets; this one names "
                    f"{len(fields)}. Split the work over several steps",
                )
            ]
        )
    ids = [i for _, f in fields if (i := f.asset_id()) is not None]
    found = await store.get_many(conn, list(dict.fromkeys(ids)), owner=owner_filter(owner))
    errors: list[FieldError] = []
    named: list[Asset] = []
    for loc, wanted in fields:
        asset_id = wanted.asset_id()
        where = (*loc, *wanted.path)
        asset = found.get(asset_id) if asset_id is not None else None
        if asset_id is None:
            errors.append(not_an_id(wanted, loc))
        elif asset is None:
            errors.append(
                FieldError(
                    where,
                    f"no asset {asset_id} that {whose} may use; give the id of one of its own "
                    "assets (GET /assets lists them)",
                )
            )
        elif not media_matches(wanted.media, asset.media_type):
            errors.append(
                FieldError(
                    where,
                    f"asset {asset_id} is {asset.media_type}, and this input takes "
                    f"{wanted.media}; give an asset of that type",
                )
            )
        else:
            named.append(asset)
    if errors:
        raise AssetInputRefused(errors, "; ".join(f"{_dotted(e.loc)}: {e.message}" for e in errors))
    return named


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


async def run_assets(conn: Conn, run_id: uuid.UUID) -> list[RunAsset]:
    """The assets a run made, oldest first, at most RUN_ASSETS_LISTED (the run is the
    caller's to show)."""
    return await store.list_for_run(conn, run_id, limit=RUN_ASSETS_LISTED)
