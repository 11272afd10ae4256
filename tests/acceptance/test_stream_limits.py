"""Live streams answer to their agent: they end when it loses access, are capped per agent
across API replicas, and end at their maximum lifetime. Real `pao api` processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.procs import wait_ready
from tests.acceptance.test_streams import Frame, _api, frames
from tests.helpers import SEED_TASK, auth, until

HEARTBEAT = 0.3


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10, read=20)) as client:
        yield client


def _start(db_url: str, tmp_path: Path, name: str, stack: ExitStack, **extra: str) -> str:
    base, proc = _api(db_url, tmp_path, name, PAO_STREAM_HEARTBEAT_SECONDS=str(HEARTBEAT), **extra)
    stack.callback(proc.kill)
    wait_ready(base, proc)
    return base


def _task_and_run(http: httpx.Client, base: str, token: str) -> tuple[str, str]:
    """A task of the agent's and one queued run of it (no worker: it stays queued)."""
    task = http.post(f"{base}/tasks", json=SEED_TASK, headers=auth(token))
    assert task.status_code == 201, task.text
    run = http.post(f"{base}/tasks/{task.json()['id']}/run_now", headers=auth(token))
    assert run.status_code == 202, run.text
    return task.json()["id"], run.json()["id"]


def _agent_id(http: httpx.Client, base: str, admin: str, name: str) -> str:
    page = http.get(f"{base}/agents", headers=auth(admin)).json()
    [found] = [a["id"] for a in page["items"] if a["name"] == name]
    return str(found)


def _drain(stream: Iterator[Frame]) -> tuple[list[Frame], float]:
    """Every frame until the server ends the stream, and when it ended (monotonic)."""
    rest = list(stream)
    return rest, time.monotonic()


def _until_heartbeat(stream: Iterator[Frame]) -> None:
    """Read up to the first heartbeat: the stream is open and past its first reads."""
    for item in stream:
        if item == ("comment", "heartbeat"):
            return
    raise AssertionError("the stream ended before its first heartbeat")


@pytest.mark.parametrize("how", ["revoked", "disabled"])
def test_a_stream_ends_within_a_heartbeat_once_its_agent_loses_access(
    db_url: str,
    admin_token: str,
    make_token: Callable[..., str],
    tmp_path: Path,
    http: httpx.Client,
    how: str,
) -> None:
    token = make_token("tasks:read", "tasks:write", "runs:read", name="watcher")
    bystander = make_token("tasks:read", "tasks:write", "runs:read", name="bystander")
    with ExitStack() as stack:
        base = _start(db_url, tmp_path, "api", stack)
        task_id, run_id = _task_and_run(http, base, token)
        _, other_run = _task_and_run(http, base, bystander)
        agent_id = _agent_id(http, base, admin_token, "watcher")
        watched = {
            "run": stack.enter_context(
                http.stream("GET", f"{base}/runs/{run_id}/stream", headers=auth(token))
            ),
            "task": stack.enter_context(
                http.stream("GET", f"{base}/tasks/{task_id}/stream", headers=auth(token))
            ),
        }
        unaffected = stack.enter_context(
            http.stream("GET", f"{base}/runs/{other_run}/stream", headers=auth(bystander))
        )
        streams = {name: frames(resp) for name, resp in watched.items()}
        for name, resp in watched.items():
            assert resp.status_code == 200, name
            _until_heartbeat(streams[name])
        on_bystander = frames(unaffected)
        _until_heartbeat(on_bystander)

        if how == "revoked":
            done = http.delete(f"{base}/agents/{agent_id}", headers=auth(admin_token))
            assert done.status_code == 204, done.text
        else:
            done = http.put(
                f"{base}/agents/{agent_id}", json={"disabled": True}, headers=auth(admin_token)
            )
            assert done.status_code == 200, done.text
        lost_at = time.monotonic()
        for name, stream in streams.items():
            rest, ended_at = _drain(stream)
            # Nothing but heartbeats after access was lost, and the end within a heartbeat
            # (plus the check's own round trip and this machine's scheduling).
            assert all(kind == "comment" for kind, _ in rest), (name, rest)
            assert ended_at - lost_at < HEARTBEAT * 2 + 1.0, (name, ended_at - lost_at)
        # The agent's token no longer opens one; another agent's stream goes on.
        assert http.get(f"{base}/runs/{run_id}/stream", headers=auth(token)).status_code == 401
        _until_heartbeat(on_bystander)


def test_an_agent_may_hold_a_limited_number_of_streams_across_replicas(
    db_url: str, make_token: Callable[..., str], tmp_path: Path, http: httpx.Client
) -> None:
    token = make_token("tasks:read", "tasks:write", "runs:read", name="greedy")
    other = make_token("tasks:read", "tasks:write", "runs:read", name="other")
    with ExitStack() as stack:
        a = _start(db_url, tmp_path, "api-a", stack)
        b = _start(db_url, tmp_path, "api-b", stack)
        task_id, run_id = _task_and_run(http, a, token)
        other_task, _ = _task_and_run(http, a, other)
        opened: list[tuple[httpx.Response, Iterator[Frame]]] = []
        for i in range(10):  # PAO_STREAMS_PER_AGENT's default, half on each replica
            base = a if i % 2 else b
            url = f"{base}/tasks/{task_id}/stream" if i % 3 else f"{base}/runs/{run_id}/stream"
            resp = stack.enter_context(http.stream("GET", url, headers=auth(token)))
            assert resp.status_code == 200, (i, resp.read())
            reading = frames(resp)
            next(reading)  # the stream is being served
            opened.append((resp, reading))  # held: a reader dropped closes its stream
        for base in (a, b):
            with http.stream("GET", f"{base}/tasks/{task_id}/stream", headers=auth(token)) as r:
                assert r.status_code == 429, base
                refused = httpx.Response(r.status_code, headers=r.headers, content=r.read())
            assert refused.headers["content-type"] == "application/problem+json"
            assert "PAO_STREAMS_PER_AGENT" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) >= 1
        # The limit is the agent's own: another agent is served.
        theirs = stack.enter_context(
            http.stream("GET", f"{a}/tasks/{other_task}/stream", headers=auth(other))
        )
        assert theirs.status_code == 200
        # A stream that closes gives its place back at once.
        opened.pop()[0].close()

        def reopened() -> httpx.Response | None:
            resp = http.send(
                http.build_request("GET", f"{a}/tasks/{task_id}/stream", headers=auth(token)),
                stream=True,
            )
            if resp.status_code == 200:
                return resp
            resp.close()
            assert resp.status_code == 429
            return None

        again: httpx.Response = until(reopened, "a place to be given back", timeout=10)
        stack.callback(again.close)


def test_a_stream_ends_cleanly_at_its_maximum_lifetime_and_can_be_reopened(
    db_url: str, writer_token: str, tmp_path: Path, http: httpx.Client
) -> None:
    with ExitStack() as stack:
        base = _start(db_url, tmp_path, "api", stack, PAO_STREAM_MAX_SECONDS="2")
        task_id, run_id = _task_and_run(http, base, writer_token)
        for url in (f"{base}/runs/{run_id}/stream", f"{base}/tasks/{task_id}/stream"):
            opened_at = time.monotonic()
            with http.stream("GET", url, headers=auth(writer_token)) as resp:
                assert resp.status_code == 200
                items: list[Any] = list(frames(resp))  # ends without a protocol error
            lasted = time.monotonic() - opened_at
            assert 2 <= lasted < 2 + HEARTBEAT + 2, (url, lasted)
            assert items[-1] == ("comment", "stream lifetime reached; reconnect"), items
            # Reconnecting starts again from the current state.
            with http.stream("GET", url, headers=auth(writer_token)) as resp:
                first = [item for item in frames(resp) if item[0] != "comment"][:1]
            assert first, url
            assert first[0][0] == "run"
            assert first[0][1]["id"] == run_id
