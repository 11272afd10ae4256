"""multipart/form-data read as it arrives (python-multipart's streaming parser).

A file part's bytes are handed on as they come, never gathered: an upload of any
size passes through in pieces of the size the server reads (64 KiB with uvicorn).
Everything else is bounded: the number of parts, each part's headers, and the
size of every part that is not a file.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from pao.errors import (
    InvalidInput,
    RateLimited,
    UnsupportedMediaType,
    UploadInterrupted,
    UploadStalled,
)

MAX_PARTS = 64
MAX_HEADERS = 8
MAX_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 8 * 1024
IDLE_SECONDS = 60.0
"""An upload that sends nothing for this long is given up (its transaction rolled back)."""


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None  # set (maybe empty) for a file part
    content_type: str | None


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | bytes | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type; InvalidInput without one."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send the file as multipart/form-data, in a part named `file` (curl -F file=@path)"
        )
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 70:
        raise InvalidInput.one(
            ("header", "content-type"),
            "multipart/form-data needs a boundary parameter of 1 to 70 characters",
        )
    return boundary


def _invalid(message: str) -> InvalidInput:
    return InvalidInput.one(("body",), message)


async def read_form(stream: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[Event]:
    """The parts of a multipart body as events: PartStart, its data (bytes), PartEnd.

    InvalidInput for a malformed body, too many parts, oversized headers or fields, or a
    body that ends before its closing boundary; UploadStalled after IDLE_SECONDS of
    silence; UploadInterrupted when the client goes away.
    """
    events: list[Event] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    parts = 0
    in_file = False
    field_bytes = 0
    ended = False

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise _invalid(f"the form has more than {MAX_PARTS} parts")
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).strip().lower()] = bytes(header_value).strip()
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal in_file, field_bytes
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise _invalid("each part needs Content-Disposition: form-data with a name")
        name = params[b"name"].decode("utf-8", "replace")
        filename = params.get(b"filename")
        ctype = headers.get(b"content-type")
        in_file = filename is not None
        field_bytes = 0
        events.append(
            PartStart(
                name=name,
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                content_type=None if ctype is None else ctype.decode("latin-1"),
            )
        )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal field_bytes
        if not in_file:
            field_bytes += end - start
            if field_bytes > MAX_FIELD_BYTES:
                raise _invalid(f"a form field other than the file is over {MAX_FIELD_BYTES} bytes")
        events.append(data[start:end])

    def on_part_end() -> None:
        events.append(PartEnd())

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
        max_header_count=MAX_HEADERS,
        max_header_size=MAX_HEADER_BYTES,
    )
    chunks = aiter(stream)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), IDLE_SECONDS)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise UploadStalled() from None
        except ClientDisconnect:
            # Answered to no one; as a problem, not an error in the log.
            raise UploadInterrupted() from None
        if ended:
            continue  # the epilogue after the closing boundary is ignored
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise _invalid(f"the multipart body is malformed ({exc}); check its boundary") from None
        for event in events:
            yield event
        events.clear()
    if not ended:
        raise _invalid("the multipart body ended before its closing boundary; nothing was stored")


class UploadSlots:
    """How many uploads this process receives at once, in all and per agent.

    Each upload holds one of this process's pooled connections (its transaction) for as
    long as its client sends: without a cap, a few slow uploads would take the pool every
    request needs. That is a matter of this process's pool, so `total` is counted here.
    One agent's share (PAO_UPLOADS_PER_AGENT) is counted twice: here from the first byte
    (so that one agent's forms stalled before their file cannot hold every slot of a
    process), and in PostgreSQL, across replicas, once the file begins
    (`pao.domain.assets.hold_upload_slot`). Over either, 429 with Retry-After.
    """

    def __init__(self, total: int, per_agent: int) -> None:
        self.total = total
        self.per_agent = per_agent
        self._busy = 0
        self._by_agent: dict[uuid.UUID, int] = {}

    @property
    def busy(self) -> int:
        """Uploads being received now."""
        return self._busy

    @asynccontextmanager
    async def hold(self, agent_id: uuid.UUID) -> AsyncIterator[None]:
        mine = self._by_agent.get(agent_id, 0)
        if mine >= self.per_agent:
            raise RateLimited(
                f"this agent already has {mine} uploads in progress (PAO_UPLOADS_PER_AGENT); "
                "wait for one to end",
                retry_after=1,
            )
        if self._busy >= self.total:
            raise RateLimited(
                f"this server is already receiving {self._busy} uploads; retry shortly",
                retry_after=1,
            )
        self._busy += 1
        self._by_agent[agent_id] = mine + 1
        try:
            yield
        finally:
            self._busy -= 1
            left = self._by_agent[agent_id] - 1
            if left:
                self._by_agent[agent_id] = left
            else:
                del self._by_agent[agent_id]
