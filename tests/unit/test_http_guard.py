"""http.request refuses private addresses in all their spellings, unless allowed."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.helpers import serving
from worker.http_tool import Allow, ToolFailed, _checked_target, _origin, http_request

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


class _Redirect(BaseHTTPRequestHandler):
    """Answers /go with a redirect to the URL in its query, and anything else with 200."""

    def do_GET(self) -> None:
        if self.path.startswith("/go?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/go?to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"reached": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _serving(host: str) -> Iterator[str]:
    server = ThreadingHTTPServer((host, 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_to_a_private_address_is_refused_on_a_live_server() -> None:
    """The first hop is allowed (127.0.0.2 is listed); the redirect to 127.0.0.1 is not."""
    allow = Allow.parse(["127.0.0.2/32"])
    with _serving("127.0.0.2") as allowed, _serving("127.0.0.1") as private:
        reached = asyncio.run(http_request({"url": f"{allowed}/go?to={allowed}/ok"}, allow))
        assert reached["status"] == 200
        assert reached["json"] == {"reached": True}
        with pytest.raises(ToolFailed, match=r"127\.0\.0\.1.*private"):
            asyncio.run(http_request({"url": f"{allowed}/go?to={private}/secret"}, allow))


class _Echo(BaseHTTPRequestHandler):
    """Answers /go with a redirect like _Redirect, and anything else with the headers it got.

    `seen` keeps the request line of every request, so a test can tell whether a proxy
    was asked to fetch something (a proxy gets the absolute URL in it).
    """

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.requestline)
        if self.path.startswith("/go?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/go?to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _echoing() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Echo", (_Echo,), {"seen": seen})
    with serving(handler) as base:
        yield base, seen


SECRETS = {
    "Authorization": "Bearer secret-token",
    "Cookie": "session=secret",
    "Proxy-Authorization": "Basic c2VjcmV0",
}
LOCAL = Allow.parse(["127.0.0.1"])


def test_credentials_are_not_sent_on_to_another_origin() -> None:
    """Two servers on two ports are two origins: the second one never sees the secrets."""
    with _echoing() as (first, _), _echoing() as (second, _):
        headers = {**SECRETS, "X-Trace": "kept"}
        args = {"url": f"{first}/go?to={second}/landed", "headers": headers}
        answer = asyncio.run(http_request(args, LOCAL))
    assert answer["status"] == 200
    assert answer["url"] == f"{second}/landed"
    received = answer["json"]
    assert received["x-trace"] == "kept"
    for name in SECRETS:
        assert name.lower() not in received, f"{name} reached {second}"


def test_credentials_in_any_case_are_stripped_too() -> None:
    with _echoing() as (first, _), _echoing() as (second, _):
        headers = {"authorization": "Bearer x", "COOKIE": "a=b"}
        args = {"url": f"{first}/go?to={second}/landed", "headers": headers}
        received = asyncio.run(http_request(args, LOCAL))["json"]
    assert "authorization" not in received
    assert "cookie" not in received


def test_credentials_follow_a_redirect_within_the_origin() -> None:
    with _echoing() as (first, _):
        args = {"url": f"{first}/go?to=/landed", "headers": SECRETS}
        received = asyncio.run(http_request(args, LOCAL))["json"]
    for name, value in SECRETS.items():
        assert received[name.lower()] == value


def test_proxy_variables_of_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's HTTP_PROXY must not carry steps' requests (and their secrets) elsewhere."""
    with _echoing() as (target, hits), _echoing() as (proxy, proxied):
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        answer = asyncio.run(http_request({"url": f"{target}/direct"}, LOCAL))
    assert answer["status"] == 200
    assert proxied == []
    assert hits == ["GET /direct HTTP/1.1"]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://example.com/a", "https://EXAMPLE.com./b?c", True),
        ("https://example.com/a", "https://example.com:443/b", True),
        ("http://example.com/a", "http://example.com:80/b", True),
        ("https://example.com/a", "http://example.com/a", False),  # a downgrade
        ("https://example.com/a", "https://example.com:8443/a", False),
        ("https://example.com/a", "https://api.example.com/a", False),
    ],
)
def test_what_counts_as_the_same_origin(a: str, b: str, same: bool) -> None:
    assert (_origin(httpx.URL(a)) == _origin(httpx.URL(b))) is same
