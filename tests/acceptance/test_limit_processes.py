"""Two API processes on one database share every limit, and log no token."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from pao import tokens
from tests.acceptance.procs import Process, free_port, wait_ready
from tests.helpers import auth


def test_two_api_processes_share_the_limits(
    db_url: str, make_token: Callable[..., str], tmp_path: Path
) -> None:
    token = make_token("tasks:read", name="busy")
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_LEVEL": "debug",
        "PAO_RATE_LIMIT_PER_MINUTE": "10",
        "PAO_AUTH_FAILURES_PER_MINUTE": "4",
    }
    bases, apis = [], []
    try:
        for n in range(2):
            port = free_port()
            bases.append(f"http://127.0.0.1:{port}")
            apis.append(
                Process(
                    [sys.executable, "-m", "pao", "api"],
                    {**env, "PAO_PORT": str(port)},
                    tmp_path / f"api{n}.log",
                )
            )
        for base, api in zip(bases, apis, strict=True):
            wait_ready(base, api)
        with httpx.Client(timeout=10) as http:
            answers = [http.get(f"{bases[n % 2]}/tasks", headers=auth(token)) for n in range(10)]
            assert [a.status_code for a in answers] == [200] * 10
            remaining = [int(a.headers["X-RateLimit-Remaining"]) for a in answers]
            assert remaining == list(range(9, -1, -1))  # one count across both processes
            for base in bases:
                refused = http.get(f"{base}/tasks", headers=auth(token))
                assert refused.status_code == 429
                assert int(refused.headers["Retry-After"]) >= 1
            # Failed sign-ins from this address, counted across both processes.
            for n in range(4):
                wrong = auth(tokens.new_token())
                assert http.get(f"{bases[n % 2]}/tasks", headers=wrong).status_code == 401
            fresh = make_token("tasks:read", name="fresh")
            for base in bases:
                slowed = http.get(f"{base}/tasks", headers=auth(tokens.new_token()))
                assert slowed.status_code == 429
                assert "failed sign-ins" in slowed.json()["detail"]
                # A valid token from the same address is still served.
                assert http.get(f"{base}/tasks", headers=auth(fresh)).status_code == 200
    finally:
        for api in apis:
            api.kill()
    logs = "".join(api.output() for api in apis)
    assert "GET /tasks" in logs  # the access log was captured
    for secret in (token, fresh):
        assert secret not in logs
        assert secret[len(tokens.PREFIX) :] not in logs
