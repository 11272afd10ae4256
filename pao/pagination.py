"""Opaque list cursors: the sort key of the last item, base64url-encoded JSON.

Clients pass `next_cursor` back unchanged; anything else is a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pao.errors import InvalidInput

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

R = TypeVar("R")


def _encode(value: list[Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> Any:
    if len(cursor) > 200:
        raise _bad()
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad() from None


def _bad() -> InvalidInput:
    return InvalidInput.one(
        ("query", "cursor"), "is not a cursor this API gave out; pass next_cursor unchanged"
    )


def encode_cursor(at: datetime, item_id: uuid.UUID) -> str:
    return _encode([at.isoformat(), str(item_id)])


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """A (time, id) position, for lists ordered newest first."""
    if cursor is None:
        return None
    value = _decode(cursor)
    try:
        at, item_id = value
        if not isinstance(at, str) or not isinstance(item_id, str):
            raise ValueError("not ours")
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(item_id)
    except (ValueError, TypeError):
        raise _bad() from None


def encode_position(position: int) -> str:
    return _encode([position])


def decode_position(cursor: str | None) -> int:
    """A numeric position, for lists ordered oldest first (log lines); 0 is the start."""
    if cursor is None:
        return 0
    value = _decode(cursor)
    if (
        not isinstance(value, list)
        or len(value) != 1
        or type(value[0]) is not int
        or not 0 <= value[0] < 2**63
    ):
        raise _bad()
    return int(value[0])


def page(
    rows: Sequence[R], limit: int, cursor_of: Callable[[R], str]
) -> tuple[list[R], str | None]:
    """Split `limit + 1` fetched rows into a page and the cursor of the next one."""
    items = list(rows[:limit])
    return items, (cursor_of(items[-1]) if len(rows) > limit else None)
