"""Private http.request targets are recognised from the URL alone, in every spelling."""

from __future__ import annotations

import pytest

from pao.netguard import private_target

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
