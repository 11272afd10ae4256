"""Bearer tokens: `pao_<32 random base62 chars><6 char checksum>`.

The checksum lets us reject a mistyped or truncated token without a database
round trip, and lets secret scanners recognise ours. Only the SHA-256 of a
token is stored: tokens carry 190 bits of randomness, so a slow hash adds
nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "pao_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 32
_CHECK_LEN = 6
TOKEN_LEN = len(PREFIX) + _RANDOM_LEN + _CHECK_LEN


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECK_LEN)


def new_token() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return PREFIX + body + _checksum(body)


def is_well_formed(token: str) -> bool:
    if len(token) != TOKEN_LEN or not token.startswith(PREFIX):
        return False
    body, check = token[len(PREFIX) : -_CHECK_LEN], token[-_CHECK_LEN:]
    # Base62 throughout, the checksum too (compare_digest raises on non-ASCII text): ASCII
    # and alphanumeric, checked in C rather than character by character.
    if not (token.isascii() and token[len(PREFIX) :].isalnum()):
        return False
    return secrets.compare_digest(_checksum(body), check)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def display_prefix(token: str) -> str:
    """What we may show later to identify a token: never enough to use it."""
    return token[: len(PREFIX) + 6]
