"""Assets: files stored in PostgreSQL, uploaded as multipart and read back streamed."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import AppState, AssetsRead, AssetsWrite, PageQuery, State
from api.models import AssetLink, AssetPublic, Page
from api.openapi import conflicts
from api.ranges import ByteRange, none_match, parse_range, range_applies
from api.uploads import PartEnd, PartStart, boundary_of, read_form
from pao import links, media
from pao.domain import assets as logic
from pao.errors import Forbidden, InvalidInput, TooLarge
from pao.models import Agent, Asset
from pao.schemas import AssetLinkCreate

router = APIRouter(prefix="/assets", tags=["assets"])
links_router = APIRouter(prefix="/asset-links", tags=["assets"])

# Room for the form's other parts and boundaries around the file, in a declared length.
FORM_OVERHEAD = 256 * 1024
_FIELDS = ("file", "label", "tags", "run_id")

# Form fields are text whatever a schema says: no `type` on the text fields, so that no
# client (or fuzzer) takes `"false"` for a boolean the server should have refused.
UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "label": {"maxLength": logic.MAX_LABEL, "description": "Free text"},
                        "tags": {"description": "Repeated, or one comma-separated value"},
                        "run_id": {"format": "uuid", "description": "A run's id"},
                    },
                }
            }
        },
    }
}
CONTENT_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The whole content"},
    206: {"description": "The range asked for (Content-Range)"},
    304: {"description": "If-None-Match names the current ETag"},
    **conflicts(416),
}
HEAD_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "The headers GET would answer with the whole content; no body"},
    206: {"description": "The headers GET would answer for the range asked for; no body"},
    304: {"description": "If-None-Match names the current ETag"},
    **conflicts(416),
}


def _limits(state: AppState) -> logic.Limits:
    return logic.Limits(
        max_bytes=state.settings.asset_max_bytes, quota_bytes=state.settings.asset_quota_bytes
    )


@router.post(
    "",
    status_code=201,
    response_model=AssetPublic,
    responses=conflicts(408, 409, 415),
    openapi_extra=UPLOAD_DOC,
)
async def upload_asset(request: Request, state: State, agent: AssetsWrite) -> Response:
    """Upload a file: `multipart/form-data` with a `file` part, and optionally `label`,
    `tags` (repeated or comma-separated) and `run_id` (a run you may see, or one with a
    step you hold a claim on: the asset then belongs to the run's owner).

    The file streams to the database as it arrives and is stored in one transaction:
    over `PAO_ASSET_MAX_BYTES` is a 413, over the owner's `PAO_ASSET_QUOTA_BYTES` a 409,
    and a refused or interrupted upload leaves nothing. `media_type` is sniffed from the
    content; a part Content-Type that contradicts it is a 422.
    """
    boundary = boundary_of(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    limits = _limits(state)
    if declared and declared.isdigit() and int(declared) > limits.max_bytes + FORM_OVERHEAD:
        raise TooLarge(
            f"the body is {declared} bytes; the largest asset is {limits.max_bytes} bytes "
            "(PAO_ASSET_MAX_BYTES). Nothing was stored"
        )
    async with state.uploads.hold(agent.id):
        asset = await _receive(request, state, agent, limits, boundary)
    return Response(
        AssetPublic.of(asset).model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": f"/assets/{asset.id}"},
    )


async def _receive(
    request: Request, state: AppState, agent: Agent, limits: logic.Limits, boundary: bytes
) -> Asset:
    """Read the form; the transaction opens with the file part and commits at the end."""
    fields = logic.AssetFields()
    tags: list[str] = []
    seen: set[str] = set()
    writer: logic.AssetWriter | None = None
    part: PartStart | None = None
    text = bytearray()
    async with AsyncExitStack() as stack:
        async for event in read_form(request.stream(), boundary):
            if isinstance(event, PartStart):
                part = event
                text.clear()
                if part.name not in _FIELDS:
                    raise InvalidInput.one(
                        (part.name[:100],),
                        f"unknown form field; send {', '.join(_FIELDS)}",
                    )
                if part.name in seen and part.name != "tags":
                    raise InvalidInput.one((part.name,), "is given more than once")
                seen.add(part.name)
                if part.name == "file":
                    if part.filename is None:
                        raise InvalidInput.one(("file",), "must be a file part (with a filename)")
                    fields.filename = part.filename
                    fields.declared_type = part.content_type
                    conn = await stack.enter_async_context(state.tx())
                    await logic.hold_upload_slot(
                        conn, agent.id, cap=state.settings.uploads_per_agent
                    )
                    owner = None
                    if fields.run_id is not None:  # the run came first: count its owner's
                        owner = (await logic.find_run_owner(conn, agent, fields.run_id)).created_by
                    writer = await stack.enter_async_context(
                        logic.AssetWriter(
                            conn, agent, limits, declared_type=part.content_type, owner=owner
                        )
                    )
            elif isinstance(event, PartEnd):
                assert part is not None
                if part.name != "file":
                    _take_field(fields, tags, part.name, _text(part.name, text))
                part = None
            elif part is not None and part.name == "file":
                assert writer is not None
                await writer.write(event)
            else:
                text.extend(event)
        if writer is None:
            raise InvalidInput.one(("file",), "the form has no `file` part")
        fields.tags = logic.split_tags(tags)
        return await writer.finish(fields)
    raise AssertionError("unreachable")  # pragma: no cover


def _text(name: str, data: bytearray) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput.one((name,), "is not UTF-8 text") from None


def _take_field(fields: logic.AssetFields, tags: list[str], name: str, value: str) -> None:
    if name == "label":
        fields.label = logic.check_label(value)
    elif name == "tags":
        tags.append(value)
    elif name == "run_id":
        try:
            fields.run_id = uuid.UUID(value.strip())
        except ValueError:
            raise InvalidInput.one(("run_id",), "is not a UUID") from None


@router.get("", response_model=Page[AssetPublic])
async def list_assets(
    state: State,
    agent: AssetsRead,
    page: PageQuery,
    tag: Annotated[str | None, Query(max_length=logic.MAX_TAG)] = None,
    label: Annotated[str | None, Query(max_length=logic.MAX_LABEL)] = None,
    media_type: Annotated[str | None, Query(max_length=255)] = None,
    run_id: uuid.UUID | None = None,
    task_id: uuid.UUID | None = None,
) -> Page[AssetPublic]:
    """Assets, newest first: your own (an admin sees every agent's). `media_type` may be
    a whole family, e.g. `audio/*`."""
    async with state.tx() as conn:
        items, next_cursor = await logic.list_assets(
            conn,
            agent,
            limit=page.limit,
            cursor=page.cursor,
            tag=tag,
            label=label,
            media_type=media_type,
            run_id=run_id,
            task_id=task_id,
        )
    return Page(items=[AssetPublic.of(a) for a in items], next_cursor=next_cursor)


@router.get("/{asset_id}", response_model=AssetPublic)
async def get_asset(state: State, agent: AssetsRead, asset_id: uuid.UUID) -> AssetPublic:
    """One asset's metadata: one of yours, or an input of a remote step you hold a claim on
    (with the `work:claim` scope too)."""
    async with state.statements.connection() as conn:
        return AssetPublic.of(await logic.get_asset(conn, agent, asset_id, as_claimer=True))


@router.delete("/{asset_id}", status_code=204)
async def delete_asset(state: State, agent: AssetsWrite, asset_id: uuid.UUID) -> Response:
    """Remove an asset and its bytes; its owner's quota is freed at once."""
    async with state.tx() as conn:
        await logic.delete_asset(conn, agent, asset_id)
    return Response(status_code=204)


@router.get("/{asset_id}/content", response_class=StreamingResponse, responses=CONTENT_DOC)
async def asset_content(
    request: Request, state: State, agent: AssetsRead, asset_id: uuid.UUID
) -> Response:
    """The asset's bytes, streamed. `Range: bytes=first-last` (one range) answers 206 with
    `Content-Range`; a range starting beyond the end, 416; a Range this server does not
    serve as asked (several ranges, another unit, malformed) is ignored: 200 with the whole.
    `ETag` is the quoted SHA-256; `If-None-Match` with it answers 304, and `If-Range`
    is honoured. Always `Content-Disposition: attachment`, never shown inline.

    A remote worker (an agent with `work:claim` too) may read the assets a step it holds a
    claim on takes as input, while the claim lasts: the ids in its `format: asset`
    parameters."""
    async with state.statements.connection() as conn:
        asset = await logic.get_asset(conn, agent, asset_id, as_claimer=True)
    return content_response(request, state, asset)


@router.head("/{asset_id}/content", response_class=Response, responses=HEAD_DOC)
async def asset_content_head(
    request: Request, state: State, agent: AssetsRead, asset_id: uuid.UUID
) -> Response:
    """What GET /assets/{id}/content would answer, headers only: `Content-Length`, `ETag`,
    and with `Range` 206 and `Content-Range` (or 416); no byte is read."""
    async with state.statements.connection() as conn:
        asset = await logic.get_asset(conn, agent, asset_id, as_claimer=True)
    return content_response(request, state, asset, head=True)


@router.post("/{asset_id}/links", status_code=201, response_model=AssetLink)
async def create_link(
    request: Request,
    state: State,
    agent: AssetsRead,
    asset_id: uuid.UUID,
    body: AssetLinkCreate | None = None,
) -> AssetLink:
    """A signed URL that reads this asset's content without a token for `expires_in`
    seconds (at most 3600). Whoever holds it can read the asset until then (or until
    the asset is deleted): hand it only to whom you would hand the file."""
    expires_in = (body or AssetLinkCreate()).expires_in
    async with state.tx() as conn:
        asset = await logic.get_asset(conn, agent, asset_id)
        key = await _link_key(state, conn)
        now = await state.clock.now(conn)  # the database's: any API replica checks by it
    expires = int(now.timestamp()) + expires_in
    ident, until, sig = links.sign(key, asset.id, expires)
    base = str(request.base_url).rstrip("/")
    return AssetLink(
        url=f"{base}/asset-links/{ident}?expires={until}&signature={sig}",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


async def _link_key(state: AppState, conn: Any) -> bytes:
    if state.link_key is None:
        state.link_key = await logic.link_key(conn, state.settings.asset_link_secret)
    return state.link_key


async def _linked_asset(
    state: State,
    asset_id: str,
    expires: Annotated[str, Query(max_length=20)] = "",
    signature: Annotated[str, Query(max_length=100)] = "",
) -> Asset:
    """The asset a genuine, unexpired link names; 403 for any other."""
    if state.link_key is None:
        async with state.tx() as conn:
            await _link_key(state, conn)
    assert state.link_key is not None
    now = state.clock().timestamp()  # the last measure of the database's clock, carried on
    found = links.verify(state.link_key, asset_id, expires, signature, now=now)
    if found is None:
        raise Forbidden("this link is not valid or has expired; ask for a new one")
    async with state.statements.connection() as conn:
        return await logic.get_linked_asset(conn, found)


LinkedAsset = Annotated[Asset, Depends(_linked_asset)]
LINK_REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "The link is not valid or has expired"}
}


@links_router.get(
    "/{asset_id}", response_class=StreamingResponse, responses={**CONTENT_DOC, **LINK_REFUSED}
)
async def linked_content(request: Request, state: State, asset: LinkedAsset) -> Response:
    """An asset's content through a signed link (POST /assets/{id}/links), no token
    needed: as GET /assets/{id}/content answers. A link changed in any character, or
    past its expiry, is a 403."""
    return content_response(request, state, asset)


@links_router.head("/{asset_id}", response_class=Response, responses={**HEAD_DOC, **LINK_REFUSED})
async def linked_content_head(request: Request, state: State, asset: LinkedAsset) -> Response:
    """What GET on a signed link would answer, headers only (as HEAD
    /assets/{id}/content)."""
    return content_response(request, state, asset, head=True)


def content_response(
    request: Request, state: AppState, asset: Asset, *, head: bool = False
) -> Response:
    """The asset's bytes as a GET of them asks: 304, 206, 200 (or a 416 raised). With
    `head`, the same status and headers and no body (nothing is read)."""
    headers = {
        "ETag": asset.etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": media.content_disposition(asset.filename, f"asset-{asset.id}"),
        "X-Content-Type-Options": "nosniff",
        # Opened anyway (a saved file, a mistaken link): no script runs, no form posts.
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private",
    }
    if none_match(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    wanted: ByteRange | None = None
    if range_applies(request.headers.get("if-range"), asset.etag):
        wanted = parse_range(request.headers.get("range"), asset.size)
    span = wanted or ByteRange(0, asset.size)
    headers["Content-Length"] = str(span.length)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = wanted.content_range(asset.size)
    if head:
        # The length GET would send, stated, not counted from an empty body.
        return Response(status_code=status, headers=headers, media_type=asset.media_type)
    return StreamingResponse(
        logic.read_bytes(state.statements.connection, asset, span.start, span.end),
        status_code=status,
        headers=headers,
        media_type=asset.media_type,
    )
