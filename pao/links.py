"""Signed asset links: a URL that reads one asset without a token until it expires.

The signature is HMAC-SHA256, under the server's link key, over the asset id and the
expiry exactly as the URL spells them; it is checked by comparing the strings, so a
link with any character changed (even one that decodes to the same id or number) is
refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

MAX_EXPIRES_IN = 3600
"""The longest a link may live, in seconds."""


def signature(key: bytes, asset_id: str, expires: str) -> str:
    """The signature of a link to `asset_id` good until the Unix time `expires`."""
    mac = hmac.new(key, f"pao-asset-link:{asset_id}:{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def sign(key: bytes, asset_id: uuid.UUID, expires: int) -> tuple[str, str, str]:
    """The id, expiry and signature of a link, as its URL spells them."""
    ident, until = str(asset_id), str(expires)
    return ident, until, signature(key, ident, until)


def verify(key: bytes, asset_id: str, expires: str, sig: str, *, now: float) -> uuid.UUID | None:
    """The asset id of a genuine, unexpired link; None for anything else."""
    if (
        len(asset_id) != 36
        or not (expires.isascii() and expires.isdigit())
        or len(expires) > 12
        or len(sig) > 64
    ):
        return None
    expected = signature(key, asset_id, expires)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
        return None
    if int(expires) <= now:
        return None
    try:
        parsed = uuid.UUID(asset_id)
    except ValueError:
        return None
    return parsed if str(parsed) == asset_id else None
