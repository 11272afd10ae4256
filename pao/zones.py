"""IANA time zones from the pip `tzdata` package only.

The host's /usr/share/zoneinfo differs between machines and ages with the OS;
loading from the pinned `tzdata` wheel makes every process (API, scheduler,
worker, CI) agree on the same rules. Names are checked against the list the
package ships before any file is opened, so a name can never be a path.
"""

from __future__ import annotations

import functools
import importlib
import re
import struct
from datetime import UTC, timedelta
from importlib import resources
from importlib.resources.abc import Traversable
from zoneinfo import ZoneInfo

from pao.errors import InvalidInput

__all__ = ["UTC", "get_zone", "offset_bounds", "tzdata_version", "zone_names"]

_MAX_NAME = 100


@functools.cache
def zone_names() -> frozenset[str]:
    """Every zone name the installed `tzdata` package ships."""
    text = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    names = {line.strip() for line in text.splitlines() if line.strip()}
    names.add("UTC")
    return frozenset(names)


@functools.cache
def tzdata_version() -> str:
    """The IANA release (such as 2026f) of the `tzdata` package every zone here comes from:
    what each stored fire time records, so that the scheduler knows which to recompute
    when an upgrade brings new rules."""
    return str(importlib.import_module("tzdata").IANA_VERSION)


def _check(name: str) -> str:
    if not isinstance(name, str) or len(name) > _MAX_NAME or name not in zone_names():
        shown = name[:_MAX_NAME] if isinstance(name, str) else repr(name)
        raise InvalidInput.one(
            ("timezone",), f"unknown time zone {shown!r}; use an IANA name such as Europe/Chisinau"
        )
    return name


def _zone_file(name: str) -> Traversable:
    node = resources.files("tzdata.zoneinfo")
    for part in name.split("/"):
        node = node.joinpath(part)
    return node


# Bounded, but larger than the ~600 zones tzdata ships; only valid names reach it.
@functools.lru_cache(maxsize=1024)
def _load(name: str) -> ZoneInfo:
    with _zone_file(name).open("rb") as fileobj:
        return ZoneInfo.from_file(fileobj, key=name)


def get_zone(name: str) -> ZoneInfo:
    """The zone called `name`; one shared object per name so callers can cache by identity."""
    return _load(_check(name))


@functools.lru_cache(maxsize=1024)
def offset_bounds(name: str) -> tuple[timedelta, timedelta]:
    """Smallest and largest UTC offset the zone ever uses (all of its history).

    The schedule code needs these to know how far local wall times and UTC
    instants can drift apart; zoneinfo does not expose them, so they are read
    from the TZif file's local-time-type table.
    """
    offsets = _tzif_offsets(_zone_file(_check(name)).read_bytes())
    if not offsets:
        return timedelta(0), timedelta(0)
    return timedelta(seconds=min(offsets)), timedelta(seconds=max(offsets))


def _tzif_offsets(data: bytes) -> list[int]:
    """UTC offsets (seconds) of every local time type in a TZif (RFC 8536) file,
    including the ones only its footer rule (used past the last transition) names."""
    header = struct.Struct(">4sc15x6l")
    magic, version, isut, isstd, leap, timecnt, typecnt, charcnt = header.unpack_from(data, 0)
    if magic != b"TZif":
        return []
    pos = header.size
    if version < b"2":
        pos += timecnt * 5
        return [struct.unpack_from(">l", data, pos + 6 * i)[0] for i in range(typecnt)]
    # Skip the version-1 block; the version-2 block has 64-bit times and is complete.
    pos += timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut
    magic, version, isut, isstd, leap, timecnt, typecnt, charcnt = header.unpack_from(data, pos)
    pos += header.size + timecnt * 9
    offsets = [struct.unpack_from(">l", data, pos + 6 * i)[0] for i in range(typecnt)]
    pos += typecnt * 6 + charcnt + leap * 12 + isstd + isut
    footer = data[pos:].strip(b"\n").decode("ascii", "replace")
    return offsets + _posix_tz_offsets(footer)


_POSIX_NAME = r"(?:<[^>]*>|[A-Za-z]{3,})"
_POSIX_OFFSET = r"([+-]?)(\d{1,3})(?::(\d{1,2}))?(?::(\d{1,2}))?"
_POSIX_TZ = re.compile(rf"{_POSIX_NAME}{_POSIX_OFFSET}(?:({_POSIX_NAME})(?:{_POSIX_OFFSET})?)?")


def _posix_tz_offsets(rule: str) -> list[int]:
    """Offsets named by a POSIX TZ string such as ``EST5EDT,M3.2.0,M11.1.0``."""
    match = _POSIX_TZ.match(rule)
    if match is None:
        return []
    sign, hours, minutes, seconds, dst_name, dsign, dhours, dminutes, dseconds = match.groups()
    # POSIX offsets count hours west of Greenwich, the opposite of UTC offsets.
    std = -_seconds(sign, hours, minutes, seconds)
    if dst_name is None:
        return [std]
    dst = std + 3600 if dhours is None else -_seconds(dsign, dhours, dminutes, dseconds)
    return [std, dst]


def _seconds(sign: str, hours: str, minutes: str | None, seconds: str | None) -> int:
    total = int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
    return -total if sign == "-" else total
