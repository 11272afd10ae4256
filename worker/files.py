"""The files a run's steps save and send: assets made by steps, and assets given to them.

A step saves a file (`http.request` with `save_body`, an MCP tool's image) as an asset of
its task's owner, tied to the run and the step: streamed into one transaction, under
PAO_ASSET_MAX_BYTES and the owner's PAO_ASSET_QUOTA_BYTES, and committed only while this
worker still holds the run's lease (a worker that lost it writes nothing for the run).

A step whose tool takes assets (`"format": "asset"` in its input schema) has every id it
gives checked before the tool is called, as its task's owner: an id that names no asset,
another agent's asset (a `${…}` lookup can bring any id, an event's payload say) or one of
the wrong media type fails the step for good.
"""

from __future__ import annotations

import base64
import contextlib
import math
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from pao import db
from pao.asset_inputs import asset_fields
from pao.domain import assets
from pao.errors import NotFound, QuotaExceeded, TooLarge
from pao.models import Agent, Asset
from pao.store import events, work
from pao.store.work import Lease
from worker.http_tool import BodyFile, ToolFailed

ASSETS_META = "pao/assets"
"""The `_meta` key of an MCP tool call that carries the content of the assets it is given."""


@dataclass(frozen=True)
class Saved:
    """An asset a step saved, as its output shows it."""

    asset: Asset

    def summary(self) -> dict[str, Any]:
        a = self.asset
        return {
            "asset_id": str(a.id),
            "filename": a.filename,
            "media_type": a.media_type,
            "size": a.size,
            "sha256": a.sha256.hex(),
        }


@dataclass(frozen=True)
class NewFile:
    """Bytes a step hands over whole (an MCP result's content) to be saved."""

    data: bytes
    filename: str = ""
    media_type: str | None = None  # as the tool declared it: refines the sniffed type only


class StepFiles:
    """One run's door to assets: what its steps save, and the assets they are given."""

    def __init__(
        self,
        pool: AsyncConnectionPool[db.Conn],
        *,
        run_id: uuid.UUID,
        lease: Lease | None,
        limits: assets.Limits,
        inline_max_bytes: int,
    ) -> None:
        self.pool = pool
        self.run_id = run_id
        self.lease = lease
        self.limits = limits
        self.inline_max_bytes = inline_max_bytes

    async def _owner(self, conn: db.Conn) -> Agent:
        origin = await events.step_origin(conn, self.run_id)
        if origin is None:
            raise ToolFailed("the run is no longer in the database")
        return origin.owner

    async def _commit_under_lease(self, conn: db.Conn) -> None:
        """Raise (the caller's transaction rolls back) unless the lease still holds."""
        if self.lease is not None and not await work.hold_lease(conn, self.lease):
            failed = ToolFailed("the run's lease was lost; nothing was saved")
            failed.final = True
            raise failed

    async def save(
        self,
        step_id: str,
        chunks: AsyncIterable[bytes],
        *,
        filename: str,
        media_type: str | None,
    ) -> Saved:
        """Stream `chunks` into a new asset of the run's owner, made by `step_id`."""
        async with db.connection(self.pool) as conn:
            owner = await self._owner(conn)
            with _as_step_error(self.limits):
                async with assets.AssetWriter(
                    conn,
                    owner,
                    self.limits,
                    declared_type=media_type,
                    owner=owner.id,
                    strict_type=False,
                ) as writer:
                    async for data in chunks:
                        await writer.write(data)
                    asset = await writer.finish(self._fields(step_id, filename))
            await self._commit_under_lease(conn)
        return Saved(asset)

    async def save_all(self, step_id: str, files: Iterable[NewFile]) -> list[Saved]:
        """Save each file as an asset, all in one transaction: all of them, or none."""
        saved: list[Saved] = []
        async with db.connection(self.pool) as conn:
            owner = await self._owner(conn)
            for file in files:
                with _as_step_error(self.limits):
                    async with assets.AssetWriter(
                        conn,
                        owner,
                        self.limits,
                        declared_type=file.media_type,
                        owner=owner.id,
                        strict_type=False,
                    ) as writer:
                        await writer.write(file.data)
                        asset = await writer.finish(self._fields(step_id, file.filename))
                saved.append(Saved(asset))
            if saved:
                await self._commit_under_lease(conn)
        return saved

    def _fields(self, step_id: str, filename: str) -> assets.AssetFields:
        return assets.AssetFields(filename=filename, run_id=self.run_id, step_id=step_id)

    async def inputs(
        self, step_id: str, schema: Mapping[str, Any], args: Mapping[str, Any]
    ) -> list[Asset]:
        """The assets a step's input gives where its tool takes assets, each checked as the
        task's owner may use it now (AssetInputRefused, final, naming each bad field)."""
        fields = asset_fields(schema, dict(args))
        if not fields:
            return []
        loc: tuple[str | int, ...] = ("steps", step_id, "with")
        async with db.connection(self.pool) as conn:
            owner = await self._owner(conn)
            whose = f"the task's owner (agent {owner.name!r})"
            named = await assets.check_step_inputs(
                conn, owner, [(loc, f) for f in fields], whose=whose
            )
        return list({a.id: a for a in named}.values())

    def body(self, asset: Asset) -> BodyFile:
        """`asset` as a request body (http.request's `body_asset`), read a chunk at a time as
        it is sent, each chunk on a connection of its own: never the whole file in memory.
        Over PAO_ASSET_MAX_BYTES (an asset kept from before the limit was lowered) the step
        fails for good."""
        if asset.size > self.limits.max_bytes:
            failed = ToolFailed(
                f"asset {asset.id} is {asset.size} bytes, more than PAO_ASSET_MAX_BYTES "
                f"({self.limits.max_bytes}); nothing was sent"
            )
            failed.final = True
            raise failed

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for data in assets.read_bytes(
                    lambda: db.connection(self.pool), asset, 0, asset.size
                ):
                    yield data
            except NotFound:
                raise ToolFailed(f"asset {asset.id} was deleted while it was sent") from None

        return BodyFile(size=asset.size, media_type=asset.media_type, open=chunks)

    async def inline(self, step_id: str, given: list[Asset]) -> dict[str, Any]:
        """The content of `given`, base64, for an MCP tool call's `_meta`: at most
        PAO_STEP_INPUT_MAX_BYTES of it in all, as any step's input."""
        encoded = sum(4 * math.ceil(a.size / 3) for a in given)
        if encoded > self.inline_max_bytes:
            failed = ToolFailed(
                f"the assets this step gives its MCP tool are {encoded} bytes in base64, more "
                f"than PAO_STEP_INPUT_MAX_BYTES ({self.inline_max_bytes}); an MCP tool is "
                "sent its assets' content inline. Give it smaller files, raise the limit, or "
                "use a task type (remote workers download assets of any size)"
            )
            failed.final = True
            raise failed
        out: dict[str, Any] = {}
        for asset in given:
            parts = [
                part
                async for part in assets.read_bytes(
                    lambda: db.connection(self.pool), asset, 0, asset.size
                )
            ]
            out[str(asset.id)] = {
                "filename": asset.filename,
                "media_type": asset.media_type,
                "size": asset.size,
                "sha256": asset.sha256.hex(),
                "data": base64.b64encode(b"".join(parts)).decode("ascii"),
            }
        return out


@contextlib.contextmanager
def _as_step_error(limits: assets.Limits) -> Iterator[None]:
    """Over PAO_ASSET_MAX_BYTES (final: the same file is as large next time) or the owner's
    quota (a retry may find room): the step fails, saying which."""
    try:
        yield
    except TooLarge:
        failed = ToolFailed(
            f"the file is larger than PAO_ASSET_MAX_BYTES ({limits.max_bytes} bytes); "
            "nothing was saved"
        )
        failed.final = True
        raise failed from None
    except QuotaExceeded:
        raise ToolFailed(
            f"saving the file would take the task owner's assets past PAO_ASSET_QUOTA_BYTES "
            f"({limits.quota_bytes} bytes); nothing was saved. Delete assets it no longer "
            "needs"
        ) from None
