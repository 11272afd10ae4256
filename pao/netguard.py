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


# IPv6 prefixes whose addresses lead to the IPv4 address in their last 32 bits: NAT64's
# well-known prefix (RFC 6052; a translator sends the packets on as IPv4), IPv4-mapped,
# IPv4-translated (SIIT) and the deprecated IPv4-compatible form.
_EMBED_LOW32 = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::ffff:0:0/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("::/96"),
)
# Never public, whatever they embed: local-use NAT64 (RFC 8215: the site's own translator,
# which may embed IPv4 at any of six offsets) and Teredo (2001::/32, relayed to a client
# behind NAT; Python already counts it as not global).
_NEVER_PUBLIC = (ipaddress.IPv6Network("64:ff9b:1::/48"),)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (NAT64, mapped, translated, compatible, 6to4)."""
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _EMBED_LOW32) and int(address) & 0xFFFF_FFFF > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Globally routable and not multicast.

    An IPv6 address that carries an IPv4 one (NAT64, 6to4, IPv4-mapped and the like) is
    judged by the IPv4 address, since that is where its packets go: `64:ff9b::7f00:1`
    reaches 127.0.0.1 through a NAT64 gateway, yet Python calls it global.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in net for net in _NEVER_PUBLIC):
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return inner.is_global and not inner.is_multicast
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
