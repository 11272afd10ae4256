"""Real processes: the API believes X-Forwarded-For only from PAO_FORWARDED_ALLOW_IPS, and
metrics servers listen on loopback unless PAO_METRICS_HOST says otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pao import tokens
from tests.acceptance.procs import Process, free_port, until_running, wait_ready
from tests.helpers import auth


def _outside_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one."""
    try:
        shown = subprocess.run(
            ["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        shown = ""
    for line in shown.splitlines():
        parts = line.split()
        if "inet" in parts:
            address = parts[parts.index("inet") + 1].split("/")[0]
            if not address.startswith("127."):
                return address
    named = socket.gethostbyname(socket.gethostname())
    return None if named.startswith("127.") else named


def _failure_keys(db: psycopg.Connection[Any]) -> set[str]:
    rows = db.execute("SELECT key FROM rate_counters WHERE key LIKE 'auth:%'").fetchall()
    return {str(key) for (key,) in rows}


def _api(db_url: str, tmp_path: Path, host: str, trusted: str) -> tuple[Process, str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_HOST": host,
        "PAO_PORT": str(port),
        "PAO_FORWARDED_ALLOW_IPS": trusted,
        "PAO_AUTH_FAILURES_PER_MINUTE": "2",
        "PAO_LOG_LEVEL": "warning",
    }
    env.pop("FORWARDED_ALLOW_IPS", None)  # uvicorn's own variable must not decide it
    api = Process([sys.executable, "-m", "pao", "api"], env, tmp_path / "api.log")
    base = f"http://{host}:{port}"
    wait_ready(base, api)
    return api, base


def test_forwarded_for_is_believed_from_a_configured_proxy_only(
    db_url: str, db: psycopg.Connection[Any], make_token: Callable[..., str], tmp_path: Path
) -> None:
    proxy = _outside_address()
    if proxy is None:
        pytest.skip("this machine has no address besides loopback to act as the proxy")
    good = make_token("tasks:read", name="behind-the-proxy")
    api, base = _api(db_url, tmp_path, proxy, proxy)
    try:
        with httpx.Client(timeout=10) as http:

            def as_client(client: str, token: str) -> int:
                headers = {**auth(token), "X-Forwarded-For": client}
                return http.get(f"{base}/tasks", headers=headers).status_code

            assert [as_client("203.0.113.1", tokens.new_token()) for _ in range(2)] == [401, 401]
            assert as_client("203.0.113.1", tokens.new_token()) == 429
            # Another client behind the same proxy: its failures are its own ...
            assert as_client("203.0.113.2", tokens.new_token()) == 401
            # ... and a valid token is served from either.
            assert as_client("203.0.113.1", good) == 200
            assert as_client("203.0.113.2", good) == 200
        assert _failure_keys(db) == {"auth:203.0.113.1", "auth:203.0.113.2"}
    finally:
        api.kill()


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    api, base = _api(db_url, tmp_path, "127.0.0.1", "198.51.100.1")
    try:
        headers = {**auth(tokens.new_token()), "X-Forwarded-For": "203.0.113.9"}
        assert httpx.get(f"{base}/tasks", headers=headers, timeout=10).status_code == 401
        assert _failure_keys(db) == {"auth:127.0.0.1"}
    finally:
        api.kill()


def _listeners(port: int) -> set[str]:
    """Local IPv4 addresses listening on `port`, from /proc/net/tcp (state 0A: LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _listens_on_all_v6(port: int) -> bool:
    path = Path("/proc/net/tcp6")
    if not path.exists():
        return False
    for line in path.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.rpartition(":")[2], 16) == port:
            return True
    return False


@pytest.mark.parametrize("name", ["scheduler", "worker"])
def test_metrics_listen_on_loopback_by_default(db_url: str, tmp_path: Path, name: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PAO_METRICS_HOST"}
    env.update({"DATABASE_URL": db_url, "PAO_METRICS_PORT": str(port)})
    proc = Process([sys.executable, "-m", "pao", name], env, tmp_path / f"{name}.log")
    try:

        def scraped() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        until_running([proc], scraped, f"the {name}'s metrics on 127.0.0.1")
        assert _listeners(port) == {"127.0.0.1"}
        assert not _listens_on_all_v6(port)
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{outside}:{port}/metrics", timeout=2)
    finally:
        proc.kill()
