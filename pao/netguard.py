"""Which `http.request` targets are private, judged from the URL alone.

The worker resolves every host and checks the address it connects to (and
each redirect). This check runs earlier, when a task is created or changed:
a URL whose host is written as a private address, in any spelling
(`127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`, `[::ffff:127.0.0.1]`),
or is a name that always means this machine or a cloud metadata service,
is refused then, instead of failing on every run. Names that merely resolve
to private addresses can only be caught by the worker.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that never lead anywhere public (RFC 6761 localhost; the metadata services).
_LOCAL_NAMES = frozenset({"localhost", "metadata.google.internal", "metadata.goog"})
# What inet_aton reads as IPv4: dotted parts in decimal, octal or hex, or one number.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.I)


def is_public(address: IPAddress) -> bool:
    """Globally routable and not multicast; an IPv4-mapped IPv6 address is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells without asking DNS, in any notation a resolver accepts."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def private_target(url: str, allow: Sequence[str] = ()) -> str | None:
    """Why `url` is a private target (None when it is not, or when `allow` admits it).

    `allow` holds PAO_HTTP_ALLOW's entries: host names, or networks in CIDR notation.
    """
    try:
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        return None  # the schema check reports a malformed URL
    if not host:
        return None
    hosts = {entry.lower().rstrip(".") for entry in allow}
    if host in hosts:
        return None
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return f"{host} always names this machine or a cloud metadata service"
    address = literal_address(host)
    if address is None or is_public(address):
        return None
    for entry in allow:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return None
        except ValueError:
            continue
    spelled = host if host.strip("[]") == str(address) else f"{host} (that is {address})"
    return f"{spelled} is a private, loopback, link-local or reserved address"
