"""The `http.request` tool, guarded against reaching private networks.

The host is resolved once, the address checked, and the connection made to
that very address (with the original name for `Host` and TLS), so a DNS
answer cannot change between the check and the request. Every redirect is
checked again. Only addresses that are globally routable are allowed, unless
`PAO_HTTP_ALLOW` names the host or a network containing the address.

Credentials (`Authorization`, `Cookie`, `Proxy-Authorization`) go only to the
origin they were written for: a redirect to another scheme, host or port drops
them. The worker's proxy variables (HTTP_PROXY, ALL_PROXY, NO_PROXY…) are
ignored: a proxy would receive every request, secrets included, and would
connect wherever it likes, past the address check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pao.errors import PaoError
from pao.netguard import is_public

if TYPE_CHECKING:  # httpx is loaded by the first http.request step, not by every worker
    import httpx

MAX_REDIRECTS = 5
# Headers that only the origin a step names may see (compared in lower case).
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# Headers describing a body, dropped with it when a redirect turns the request into a GET.
BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ToolFailed(PaoError):
    """The tool could not do what the step asked."""


@dataclass(frozen=True)
class Allow:
    """The operator's exceptions to the private-address guard (PAO_HTTP_ALLOW)."""

    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Allow:
        hosts: set[str] = set()
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def permits(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(address in net for net in self.networks)


async def _resolve(host: str, port: int) -> IPAddress:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ToolFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
    if not infos:
        raise ToolFailed(f"cannot resolve {host!r}")
    return ipaddress.ip_address(infos[0][4][0])


async def _checked_target(url: httpx.URL, allow: Allow) -> tuple[httpx.URL, dict[str, Any]]:
    """The URL to connect to (host replaced by its checked address) and its extensions."""
    if url.scheme not in ("http", "https"):
        raise ToolFailed(f"only http and https URLs are allowed, not {url.scheme!r}")
    host = url.host
    if not host:
        raise ToolFailed("the URL has no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    address = await _resolve(host, port)
    if not is_public(address) and not allow.permits(host, address):
        raise ToolFailed(
            f"{host} resolves to {address}, a private, loopback, link-local or reserved "
            "address; an operator may allow it with PAO_HTTP_ALLOW"
        )
    pinned = url.copy_with(host=str(address))
    extensions: dict[str, Any] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = host
    return pinned, extensions


SaveBody = Callable[[AsyncIterator[bytes], str, str | None], Awaitable[dict[str, Any]]]
"""Stores a response body as it streams in (chunks, a filename, the declared Content-Type)
and says what was stored: `asset_id`, `size`, `media_type`, `sha256`, `filename`."""


@dataclass(frozen=True)
class BodyFile:
    """A request body sent from a file (`body_asset`): its size and media type, and a way to
    read it from the start, streamed (once per request sent: a 307 sends it again)."""

    size: int
    media_type: str
    open: Callable[[], AsyncIterator[bytes]]


async def http_request(
    args: dict[str, Any],
    allow: Allow,
    save: SaveBody | None = None,
    send: BodyFile | None = None,
) -> dict[str, Any]:
    """Make the request a step asks for. With `save_body` (and `save`), a 2xx response's
    body streams into `save` and the result says what was saved instead of holding it.
    With `send` (the step's `body_asset`), the file is the request body, streamed."""
    import httpx

    save_body = bool(args.get("save_body")) and save is not None
    method = str(args.get("method", "GET")).upper()
    url = httpx.URL(str(args["url"]))
    headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()}
    timeout = float(args.get("timeout_seconds", 30))
    max_bytes = int(args.get("max_bytes", 1_048_576))
    content: bytes | None = None
    if "json" in args:
        content = json.dumps(args["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    elif "body" in args:
        content = str(args["body"]).encode()
    elif send is not None:
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = send.media_type
        # Its length, stated: sent as is, not chunked (servers may refuse chunked bodies).
        headers = _without(headers, frozenset({"content-length", "transfer-encoding"}))
        headers["Content-Length"] = str(send.size)
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(follow_redirects=False, trust_env=False) as client,
        ):
            for _ in range(MAX_REDIRECTS + 1):
                target, extensions = await _checked_target(url, allow)
                request = client.build_request(
                    method,
                    target,
                    headers={**headers, "Host": url.netloc.decode()},
                    content=send.open() if send is not None else content,
                    extensions=extensions,
                )
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        following = url.join(response.headers["location"])
                        if _origin(following) != _origin(url):
                            headers = _without(headers, CREDENTIAL_HEADERS)
                        url = following
                        if response.status_code == 303 or (
                            response.status_code in (301, 302) and method == "POST"
                        ):
                            method, content, send = "GET", None, None
                            headers = _without(headers, BODY_HEADERS)
                        continue
                    if save_body and response.is_success:
                        assert save is not None
                        saved = await save(
                            response.aiter_bytes(),
                            _filename(response, url),
                            response.headers.get("content-type"),
                        )
                        return _saved(response, url, saved)
                    body, truncated = await _read(response, max_bytes)
                finally:
                    await response.aclose()
                result = _result(response, body, truncated, url)
                if save_body:  # not a success: nothing saved, the body shows why
                    result["asset_id"] = None
                return result
    except TimeoutError:
        raise ToolFailed(f"no complete answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise ToolFailed(f"HTTP request failed: {exc}") from None
    raise ToolFailed(f"more than {MAX_REDIRECTS} redirects")


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    """Scheme, host and port: what a redirect must keep for credentials to follow it."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.scheme, url.host.lower().rstrip("."), port


def _without(headers: dict[str, str], names: frozenset[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in names}


async def _read(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False


def _filename(response: httpx.Response, url: httpx.URL) -> str:
    """The name a saved body is stored under: Content-Disposition's (RFC 6266, `filename*`
    first), else the last part of the URL's path (made safe when stored)."""
    disposition = response.headers.get("content-disposition")
    if disposition:
        import email.message

        message = email.message.Message()
        message["content-disposition"] = disposition
        try:
            named = message.get_filename()
        except (ValueError, LookupError):
            named = None
        if named:
            return str(named)
    return unquote(url.path.rsplit("/", 1)[-1])


def _saved(response: httpx.Response, url: httpx.URL, saved: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": response.status_code,
        "headers": dict(response.headers),
        "url": str(url),
        **saved,
    }


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} cannot be stored as JSON")


def _result(
    response: httpx.Response, body: bytes, truncated: bool, url: httpx.URL
) -> dict[str, Any]:
    text = body.decode(response.encoding or "utf-8", errors="replace")
    parsed: Any = None
    if "json" in response.headers.get("content-type", "") and not truncated:
        try:
            parsed = json.loads(text, parse_constant=_no_constants)
        except ValueError:
            parsed = None
    return {
        "status": response.status_code,
        "headers": dict(response.headers),
        "body": text,
        "json": parsed,
        "truncated": truncated,
        "url": str(url),
    }
