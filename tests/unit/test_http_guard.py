"""http.request refuses private addresses in all their spellings, unless allowed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from worker.http_tool import Allow, ToolFailed, _checked_target

NOTHING_ALLOWED = Allow.parse([])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://localhost:8080/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://10.0.0.5/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://224.0.0.1/",
        "https://127.0.0.1/",
    ],
)
def test_private_spellings_are_refused(url: str) -> None:
    with pytest.raises(ToolFailed, match="private"):
        asyncio.run(_checked_target(httpx.URL(url), NOTHING_ALLOWED))


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://x/"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(ToolFailed, match="only http and https"):
        asyncio.run(_checked_target(httpx.URL(url), NOTHING_ALLOWED))


def test_the_connection_is_pinned_to_the_checked_address() -> None:
    target, extensions = asyncio.run(
        _checked_target(httpx.URL("https://93.184.215.14:8443/x?y=1"), NOTHING_ALLOWED)
    )
    assert str(target) == "https://93.184.215.14:8443/x?y=1"
    assert extensions == {"sni_hostname": "93.184.215.14"}


def test_the_allow_list_admits_named_hosts_and_networks() -> None:
    allow = Allow.parse(["localhost", "10.1.0.0/16"])
    target, _ = asyncio.run(_checked_target(httpx.URL("http://localhost:9/"), allow))
    assert target.host in ("127.0.0.1", "::1")
    asyncio.run(_checked_target(httpx.URL("http://10.1.2.3/"), allow))
    with pytest.raises(ToolFailed):
        asyncio.run(_checked_target(httpx.URL("http://10.2.0.1/"), allow))
