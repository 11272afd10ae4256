"""Private http.request targets are recognised from the URL alone, in every spelling."""

from __future__ import annotations

import ipaddress

import pytest

from pao.netguard import is_public, private_target

PRIVATE = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0/",
    "http://0.0.0.0/",
    "http://localhost:8080/",
    "HTTP://LOCALHOST./",
    "http://api.localhost/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[0:0:0:0:0:ffff:7f00:1]/",
    "http://10.0.0.5/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00::1]/",
    "http://224.0.0.1/",
    "https://user:pw@127.0.0.1/",
    "http://example.com@10.1.2.3/",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_spellings_are_named(url: str) -> None:
    why = private_target(url)
    assert why is not None
    assert "private" in why or "this machine" in why


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/",
        "http://93.184.215.14:8443/x",
        "http://1.1/",  # 1.0.0.1, public
        "https://${steps.lookup.host}/x",  # known only when the step runs: the worker checks
        "http://127.0.0.1.nip.io/",  # a name: the worker resolves and checks it
        "not a url",
    ],
)
def test_public_or_unknowable_targets_pass(url: str) -> None:
    assert private_target(url) is None


def test_the_operators_allow_list_admits_hosts_and_networks() -> None:
    assert private_target("http://localhost:9/", ["localhost"]) is None
    assert private_target("http://10.1.2.3/", ["10.1.0.0/16"]) is None
    assert private_target("http://10.2.0.1/", ["10.1.0.0/16"]) is not None
    assert private_target("http://127.0.0.1/", ["127.0.0.1"]) is None


# IPv6 forms that carry an IPv4 address reach that address: NAT64 (a translator turns
# them into IPv4 packets), 6to4, IPv4-compatible and IPv4-translated. Each is judged by
# the address it embeds; a local-use NAT64 prefix and Teredo are never public.
EMBEDDED_PRIVATE = [
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::127.0.0.1",
    "64:ff9b::a9fe:a9fe",  # 169.254.169.254
    "64:ff9b::a00:5",  # 10.0.0.5
    "64:ff9b:1::808:808",  # local-use NAT64: the site's own translator
    "64:ff9b:1:ab00::",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101:1::1",  # 6to4 of 192.168.1.1
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::a00:5",
    "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
    "::ffff:0:a9fe:a9fe",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo, client 8.8.8.8: still refused
]
EMBEDDED_PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:808:808", "2606:4700::1111"]


@pytest.mark.parametrize("address", EMBEDDED_PRIVATE)
def test_ipv6_forms_of_private_ipv4_are_private(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    why = private_target(f"http://[{address}]/")
    assert why is not None
    assert "private" in why


@pytest.mark.parametrize("address", EMBEDDED_PUBLIC)
def test_ipv6_forms_of_public_ipv4_stay_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    assert private_target(f"http://[{address}]/") is None


def test_the_allow_list_admits_an_embedded_form_only_by_its_own_network() -> None:
    assert private_target("http://[64:ff9b::7f00:1]/", ["127.0.0.1/32"]) is not None
    assert private_target("http://[64:ff9b::7f00:1]/", ["64:ff9b::/96"]) is None
