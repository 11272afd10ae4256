"""Opaque list cursors: the sort key of the last item, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from pao.errors import InvalidInput

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def encode_cursor(at: datetime, item_id: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(item_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    bad = InvalidInput.one(
        ("query", "cursor"), "is not a cursor this API gave out; pass next_cursor unchanged"
    )
    if len(cursor) > 200:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, item_id = json.loads(raw)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(item_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad from None
