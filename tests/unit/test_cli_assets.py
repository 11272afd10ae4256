"""The pieces of `pao assets` and the MCP asset resources that need no server."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from pao.cli_assets import local_name
from pao.cli_client import size
from pao.client import Asset, _partial
from pao.mcp_server import _is_text


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (20 * 1024 * 1024, "20.0 MiB"),
        (10 << 30, "10.0 GiB"),
        (3 << 40, "3.0 TiB"),
        (5000 << 40, "5000.0 TiB"),
    ],
)
def test_sizes_for_people(count: int, shown: str) -> None:
    assert size(count) == shown


def _asset(filename: str) -> Asset:
    fields: dict[str, Any] = {"id": "0b6c3a57-3f0e-4d8c-9d1e-6c1f0a2b9e44", "filename": filename}
    return fields  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("filename", "saved"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\evil.exe", "evil.exe"),
        ("/abs/path.txt", "path.txt"),
        (".bashrc", "asset-0b6c3a57-3f0e-4d8c-9d1e-6c1f0a2b9e44"),
        ("dir/..", "asset-0b6c3a57-3f0e-4d8c-9d1e-6c1f0a2b9e44"),
        ("", "asset-0b6c3a57-3f0e-4d8c-9d1e-6c1f0a2b9e44"),
    ],
)
def test_a_download_lands_in_the_current_folder_under_a_plain_name(
    filename: str, saved: str
) -> None:
    assert local_name(_asset(filename)) == saved


def test_a_partial_download_is_measured_and_hashed(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    have, digest = _partial(part, 10)
    assert (have, digest.hexdigest()) == (0, hashlib.sha256().hexdigest())
    part.write_bytes(b"abcd")
    have, digest = _partial(part, 10)
    assert (have, digest.hexdigest()) == (4, hashlib.sha256(b"abcd").hexdigest())
    part.write_bytes(b"x" * 11)  # longer than the asset: not a part of it
    have, digest = _partial(part, 10)
    assert (have, digest.hexdigest()) == (0, hashlib.sha256().hexdigest())


@pytest.mark.parametrize(
    ("media_type", "text"),
    [
        ("text/plain", True),
        ("text/csv; charset=utf-8", True),
        ("application/json", True),
        ("application/ld+json", True),
        ("image/svg+xml", True),
        ("application/yaml", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("application/pdf", False),
    ],
)
def test_which_resources_are_read_as_text(media_type: str, text: bool) -> None:
    assert _is_text(media_type) is text
