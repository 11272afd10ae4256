"""Conditional and partial GETs of stored bytes (RFC 9110 sections 13 and 14).

One range at a time. A Range header this server does not serve as asked is ignored,
as RFC 9110 section 14.2 allows, and the whole content answers (200): another unit
than `bytes`, a malformed one (`bytes=5-2`, `bytes=abc`, an empty set) and several
ranges at once (multipart/byteranges is not offered). A well-formed single range
that starts at or beyond the end is a 416 with `Content-Range: bytes */size`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pao.errors import RangeNotSatisfiable

# A position with more digits than this is beyond any size we store (2**63 has 19).
_MAX_DIGITS = 19
_SPEC = re.compile(r"^(?:(\d+)-(\d*)|-(\d+))$")
_ETAG = re.compile(r'(W/)?"([\x21\x23-\x7e]*)"')


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def _number(digits: str) -> int | None:
    """The number, or None when it is longer than any size (a huge position)."""
    return int(digits) if len(digits) <= _MAX_DIGITS else None


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range to serve, or None for the whole content; RangeNotSatisfiable (416)
    for a single well-formed range that selects nothing of `size` bytes."""
    if header is None:
        return None
    unit, eq, spec_set = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec_set.split(",")]
    specs = [s for s in specs if s]
    if len(specs) != 1:
        return None  # empty, or several ranges: served whole
    found = _SPEC.match(specs[0])
    if found is None:
        return None
    first, last, suffix = found.groups()
    if suffix is not None:
        length = _number(suffix)
        if length == 0:
            raise RangeNotSatisfiable("a suffix range of 0 bytes selects nothing", size=size)
        if size == 0:
            raise RangeNotSatisfiable("the content is empty", size=size)
        start = 0 if length is None else max(0, size - length)
        return ByteRange(start, size)
    start_at = _number(first)
    end_at = None if not last else _number(last)
    if last and end_at is not None and start_at is not None and end_at < start_at:
        return None  # invalid (last before first): ignored
    if start_at is None or start_at >= size:
        raise RangeNotSatisfiable(
            f"the range starts at or beyond the end of the content ({size} bytes)", size=size
        )
    end = size if end_at is None else min(end_at + 1, size)
    return ByteRange(start_at, end)


def etags(header: str) -> list[tuple[bool, str]]:
    """The entity tags of an If-None-Match / If-Match list: (weak, quoted tag) each."""
    return [(bool(weak), f'"{tag}"') for weak, tag in _ETAG.findall(header)]


def none_match(header: str | None, etag: str) -> bool:
    """Whether If-None-Match holds the current tag (weak comparison): the answer is 304."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(tag == etag for _, tag in etags(header))


def range_applies(if_range: str | None, etag: str) -> bool:
    """Whether Range is to be honoured: no If-Range, or one naming the current tag
    strongly. A date (we send no Last-Modified) or another tag means the whole content."""
    if if_range is None:
        return True
    found = etags(if_range.strip())
    return len(found) == 1 and not found[0][0] and found[0][1] == etag
