"""JSON log lines, the settings that choose them, and the stream notifications' encoding."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest

from pao import logs, streams
from pao.settings import Settings, SettingsError


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("pao.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_json_line_carries_the_ids_of_its_context() -> None:
    formatter = logs.JsonFormatter()
    assert set(json.loads(formatter.format(_record("plain")))) == {
        "timestamp",
        "level",
        "logger",
        "message",
    }

    async def in_a_run() -> str:
        logs.run_id.set("r-1")
        logs.task_id.set("t-1")
        return formatter.format(_record("inside %s"))

    line = json.loads(asyncio.run(in_a_run()))
    assert line["run_id"] == "r-1"
    assert line["task_id"] == "t-1"
    assert line["level"] == "warning"
    assert line["logger"] == "pao.test"
    assert line["timestamp"].endswith("+00:00")
    # The run's task had its own context: nothing leaked out here.
    assert "run_id" not in json.loads(formatter.format(_record("after")))
    # An id given on the call wins over the context.
    token = logs.request_id.set("ctx")
    try:
        given = json.loads(formatter.format(_record("x", request_id="given")))
    finally:
        logs.request_id.reset(token)
    assert given["request_id"] == "given"


def test_a_json_line_stays_one_line_with_an_exception() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord(
            "pao.test",
            logging.ERROR,
            __file__,
            1,
            "failed",
            (),
            exc_info=__import__("sys").exc_info(),
        )
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError" in json.loads(text)["exception"]


def test_settings_for_logs_metrics_and_streams() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({}).metrics_port == 9464
    chosen = Settings.from_env(
        {"PAO_LOG_FORMAT": "JSON", "PAO_METRICS_PORT": "0", "PAO_STREAM_HEARTBEAT_SECONDS": "0.5"}
    )
    assert (chosen.log_format, chosen.metrics_port, chosen.stream_heartbeat_seconds) == (
        "json",
        0,
        0.5,
    )
    for env, named in (
        ({"PAO_LOG_FORMAT": "yaml"}, "PAO_LOG_FORMAT"),
        ({"PAO_METRICS_PORT": "70000"}, "PAO_METRICS_PORT"),
        ({"PAO_STREAM_HEARTBEAT_SECONDS": "soon"}, "PAO_STREAM_HEARTBEAT_SECONDS"),
    ):
        with pytest.raises(SettingsError, match=named):
            Settings.from_env(env)


def test_stream_events_stay_small_enough_to_notify() -> None:
    run, task = uuid.uuid4(), uuid.uuid4()
    small = json.loads(
        streams.step(run, task, 0, {"id": "a", "uses": "log", "status": "succeeded", "output": 1})
    )
    assert small["step"] == {"id": "a", "uses": "log", "status": "succeeded", "output": 1}
    big = {"id": "a", "uses": "log", "status": "succeeded", "output": "x" * 50_000, "input": {}}
    event = json.loads(streams.step(run, task, 0, big))
    assert event["step"]["output_truncated"] is True
    assert "output" not in event["step"]
    assert "input" not in event["step"]
    many = [{"id": f"step-{i}" * 20, "uses": "log", "status": "succeeded"} for i in range(200)]
    assert json.loads(streams.snapshot(run, task, "running", 1, many))["e"] == "sync"
    for text in (streams.state(run, task, "running", 1), streams.log(run, task, 7)):
        assert len(streams.parse(text)) == 1
    assert streams.parse("not json") == []
    assert streams.parse('{"e": "state", "run": "nope", "task": "nope"}') == []


def test_events_are_packed_into_few_notifications() -> None:
    run, task = uuid.uuid4(), uuid.uuid4()
    events = [streams.log(run, task, i) for i in range(1000)]
    payloads = streams.pack(events)
    assert 1 < len(payloads) < 30
    assert all(len(p.encode()) < 8000 for p in payloads)
    unpacked = [e for p in payloads for e in streams.parse(p)]
    assert [e["id"] for e in unpacked] == list(range(1000))  # all, in order
    assert streams.pack([]) == []
    assert streams.parse('[{"e": "log", "run": "x", "task": "y"}, 3]') == []


def test_workers_forget_watches_that_are_not_repeated() -> None:
    now = [0.0]
    watched = streams.Watched(ttl=10, clock=lambda: now[0])
    a, b = uuid.uuid4(), uuid.uuid4()
    assert not watched
    assert watched.heard(f"{a} {b} junk") == [a, b]
    now[0] = 5.0
    assert watched.heard(str(a)) == []  # still watched: not new
    assert a in watched
    assert b in watched
    now[0] = 12.0
    assert a in watched
    assert b not in watched
    now[0] = 100.0
    assert watched.heard(str(a)) == [a]  # had expired: new again
    payloads = list(streams.announcements([uuid.uuid4() for _ in range(400)]))
    assert len(payloads) == 3
    assert all(len(p) < streams.MAX_PAYLOAD for p in payloads)
