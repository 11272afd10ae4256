"""Live runs over Server-Sent Events, on real API and worker processes."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from tests.acceptance.procs import Process, free_port, wait_ready
from tests.helpers import SEED_TASK, auth, metric, until

Frame = tuple[str, Any]


def frames(resp: httpx.Response) -> Iterator[Frame]:
    """("comment", text) for comment lines, else (event name, parsed data)."""
    event, data = "message", list[str]()
    for line in resp.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


def _read_until(stream: Iterator[Frame], stop: Callable[[Frame], bool]) -> list[Frame]:
    seen: list[Frame] = []
    for item in stream:
        seen.append(item)
        if stop(item):
            return seen
    raise AssertionError(f"the stream closed early after {seen}")


def _ended_run(item: Frame) -> bool:
    return item[0] == "run" and item[1]["status"] == "succeeded"


def _api(db_url: str, tmp_path: Path, name: str, **extra: str) -> tuple[str, Process]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_PORT": str(port),
        "PAO_LOG_LEVEL": "info",
        "PAO_STREAM_HEARTBEAT_SECONDS": "0.5",
        **extra,
    }
    proc = Process([sys.executable, "-m", "pao", "api"], env, tmp_path / f"{name}.log")
    return f"http://127.0.0.1:{port}", proc


def _check_story(items: list[Frame], run_id: str) -> None:
    """Started, the first step started and ended, a log line, succeeded: in that order."""
    mine = [(kind, data) for kind, data in items if kind != "comment"]
    assert all(data["run_id" if kind != "run" else "id"] == run_id for kind, data in mine)

    def at(check: Callable[[Frame], bool]) -> int:
        found = [i for i, item in enumerate(mine) if check(item)]
        assert found, mine
        return found[0]

    started = at(lambda f: f[0] == "state" and f[1]["status"] == "running")
    step_start = at(
        lambda f: f[0] == "step" and f[1]["index"] == 0 and f[1]["step"]["status"] == "running"
    )
    step_end = at(
        lambda f: f[0] == "step" and f[1]["index"] == 0 and f[1]["step"]["status"] == "succeeded"
    )
    logged = at(lambda f: f[0] == "log" and f[1]["message"] == "hello stream")
    succeeded = at(lambda f: f[0] == "state" and f[1]["status"] == "succeeded")
    final = at(_ended_run)
    assert mine[0][0] == "run"
    assert mine[0][1]["status"] == "queued"
    assert started < step_start < step_end < succeeded < final
    assert started < logged < succeeded
    # The final run carries every step with its output.
    assert [s["status"] for s in mine[final][1]["steps"]] == ["succeeded"] * 3
    # Each step is told once per change: never repeated, never backwards.
    told = [(d["index"], d["step"]["status"]) for k, d in mine if k == "step"]
    assert len(told) == len(set(told))


def test_a_run_streams_live_from_any_api_process(
    db_url: str, writer_token: str, make_token: Callable[..., str], tmp_path: Path
) -> None:
    stranger = make_token("tasks:read", "tasks:write", "runs:read", name="stranger")
    no_runs_scope = make_token("tasks:read", name="reader")
    with ExitStack() as stack:
        a, api_a = _api(db_url, tmp_path, "api-a")
        b, api_b = _api(db_url, tmp_path, "api-b", PAO_LOG_FORMAT="json")
        stack.callback(api_a.kill)
        stack.callback(api_b.kill)
        wait_ready(a, api_a)
        wait_ready(b, api_b)
        http = stack.enter_context(httpx.Client(timeout=httpx.Timeout(10, read=30)))
        pipeline = [
            {"id": "wait", "uses": "sleep", "with": {"seconds": 1}},
            {"id": "say", "uses": "log", "with": {"message": "hello stream"}},
            {"id": "done", "uses": "sleep", "with": {"seconds": 0}},
        ]
        task = http.post(
            f"{a}/tasks",
            json={**SEED_TASK, "payload": {"pipeline": pipeline}},
            headers=auth(writer_token),
        ).json()
        run = http.post(f"{a}/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
        assert run["status"] == "queued"  # no worker yet

        # Another agent's view: as if neither existed. Without runs:read: 403.
        for url in (f"{a}/runs/{run['id']}/stream", f"{b}/tasks/{task['id']}/stream"):
            hidden = http.get(url, headers=auth(stranger))
            assert hidden.status_code == 404, hidden.text
            assert hidden.headers["content-type"] == "application/problem+json"
            assert http.get(url, headers=auth(no_runs_scope)).status_code == 403
            assert http.get(url).status_code == 401

        # A queued run cancelled by an agent: its stream tells, then closes.
        doomed = http.post(f"{a}/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
        with http.stream(
            "GET", f"{b}/runs/{doomed['id']}/stream", headers=auth(writer_token)
        ) as doomed_resp:
            on_doomed = frames(doomed_resp)
            assert next(on_doomed)[1]["status"] == "queued"
            cancel = http.post(f"{a}/runs/{doomed['id']}/cancel", headers=auth(writer_token))
            assert cancel.status_code == 202
            rest = [item for item in on_doomed if item[0] != "comment"]
        assert [kind for kind, _ in rest] == ["state", "run"]
        assert rest[0][1]["status"] == "cancelled"
        assert rest[1][1]["status"] == "cancelled"

        run_resp = stack.enter_context(
            http.stream("GET", f"{a}/runs/{run['id']}/stream", headers=auth(writer_token))
        )
        assert run_resp.status_code == 200
        assert run_resp.headers["content-type"].startswith("text/event-stream")
        on_a = frames(run_resp)
        # The run as it is now, then heartbeats while nothing happens.
        early = _read_until(on_a, lambda f: f == ("comment", "heartbeat"))
        assert early[0][0] == "run"

        task_resp = stack.enter_context(
            http.stream("GET", f"{b}/tasks/{task['id']}/stream", headers=auth(writer_token))
        )
        assert task_resp.status_code == 200
        on_b = frames(task_resp)
        assert next(on_b) == ("comment", "connected")

        worker_env = {**os.environ, "DATABASE_URL": db_url, "PAO_METRICS_PORT": "0"}
        worker = Process([sys.executable, "-m", "pao", "worker"], worker_env, tmp_path / "w.log")
        stack.callback(worker.kill)

        seen_a = early + _read_until(on_a, _ended_run)
        assert list(on_a) == []  # the stream closed after the final state
        _check_story(seen_a, run["id"])

        # B never saw this run queued or started by anyone it talked to: the worker's
        # notifications reached it through PostgreSQL.
        seen_b = _read_until(on_b, _ended_run)
        _check_story(seen_b, run["id"])
        # The task stream goes on across runs until the client leaves.
        again = http.post(f"{a}/tasks/{task['id']}/run_now", headers=auth(writer_token)).json()
        later = _read_until(on_b, _ended_run)
        assert {
            data["run_id" if kind != "run" else "id"] for kind, data in later if kind != "comment"
        } == {again["id"]}
        task_resp.close()  # the client leaves

        def streams_open(base: str) -> float:
            return metric(http.get(f"{base}/metrics").text, "pao_api_streams_open")

        # Shutting down ends the streams at once and cleanly: clients reconnect elsewhere.
        last = stack.enter_context(
            http.stream("GET", f"{a}/tasks/{task['id']}/stream", headers=auth(writer_token))
        )
        on_last = frames(last)
        assert next(on_last) == ("comment", "connected")
        api_a.proc.send_signal(signal.SIGTERM)
        rest = list(on_last)  # ends without a protocol error: the response was completed
        assert all(kind == "comment" for kind, _ in rest), rest
        assert api_a.proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert "graceful shutdown exceeded" not in api_a.output()
        a, api_a = _api(db_url, tmp_path, "api-a2")
        stack.callback(api_a.kill)
        wait_ready(a, api_a)

        until(
            lambda: (streams_open(a), streams_open(b)) == (0, 0),
            "the streams to close after their clients left",
            20,
        )

    # B logged JSON lines, one per request, each with its ids.
    lines = [json.loads(line) for line in api_b.output().splitlines() if line.strip()]
    streamed = [line for line in lines if line["message"].startswith("GET /tasks/{task_id}/stream")]
    assert streamed, lines
    assert all(line["task_id"] == task["id"] and line["request_id"] for line in streamed)
    assert any(line.get("run_id") == doomed["id"] for line in lines)
