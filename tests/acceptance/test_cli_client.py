"""`pao tasks|runs|events` against a real `pao api` and `pao worker`.

Each command family runs at least once as a real `pao` subprocess (its exit status and
output across the process boundary); the other commands run `pao`'s main in this process
(`pao_text`), the same code without a Python start-up and its imports each time."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.acceptance.procs import Process, pao, pao_text
from tests.acceptance.running import api_process, finished_run, worker_process
from tests.helpers import auth, snapshot

HELLO = {"pipeline": [{"id": "hello", "uses": "log", "with": {"message": "hi from the cli"}}]}


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[str]:
    with api_process(db_url, tmp_path) as base:
        yield base


def _env(base: str, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PAO_TOKEN", "DATABASE_URL")}
    env["PAO_API_URL"] = base
    if token is not None:
        env["PAO_TOKEN"] = token
    return env


def _cli(
    base: str, token: str | None, *, process: bool = False
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`pao ARGS` against the API with this token: in this process, or as a subprocess."""
    env = _env(base, token)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return pao(*args, env=env) if process else pao_text(*args, env=env)

    return run


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return done.stdout


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(_ok(done))


def _rows(text: str) -> list[dict[str, str]]:
    """A table printed for people, read back: one dict per row, keyed by column header."""
    lines = [line for line in text.splitlines() if line.strip()]
    headers = re.split(r"\s{2,}", lines[0].strip())
    rows = []
    for line in lines[1:]:
        if line.startswith("("):  # the "(more: …)" hint
            continue
        cells = re.split(r"\s{2,}", line.strip())
        rows.append(dict(zip(headers, cells + [""] * (len(headers) - len(cells)), strict=True)))
    return rows


def _fields(text: str) -> dict[str, str]:
    """`key  value` lines (up to the first blank line) as a dict."""
    block = text.split("\n\n", 1)[0]
    return dict(tuple(re.split(r"\s{2,}", line.strip(), maxsplit=1)) for line in block.splitlines())  # type: ignore[misc]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.fixture
def worker(db_url: str, tmp_path: Path) -> Iterator[Process]:
    """A `pao worker`, asked for before `api` so that the two start side by side. With no
    scheduler it runs only what `pao tasks run` queues."""
    with worker_process(db_url, tmp_path) as proc:
        yield proc


def test_the_cli_creates_lists_runs_pauses_and_reads_runs(
    worker: Process, api: str, writer_token: str, tmp_path: Path
) -> None:
    cli = _cli(api, writer_token)
    created = _json(
        _cli(api, writer_token, process=True)(
            "tasks", "create", "--json", "--title", "CLI hello", "--cron", "*/5 * * * *",
            "--timezone", "UTC", "--payload", json.dumps(HELLO),
        )
    )  # fmt: skip
    task_id = created["id"]
    assert created["status"] == "active"
    assert created["schedule_expr"] == "*/5 * * * *"
    assert created["payload"] == HELLO

    # The same through a file and the table output; flags override the file.
    spec = tmp_path / "task.json"
    spec.write_text(json.dumps({"title": "from file", "schedule_kind": "event",
                                "schedule_expr": "cli.*", "payload": HELLO}))  # fmt: skip
    shown = _ok(cli("tasks", "create", "--file", str(spec), "--title", "Event hello"))
    event_task = re.search(r"created task ([0-9a-f-]{36})", shown)
    assert event_task, shown
    assert _fields(shown.split("\n", 1)[1])["title"] == "Event hello"

    listed = {row["ID"]: row for row in _rows(_ok(cli("tasks", "list")))}
    assert listed.keys() == {task_id, event_task.group(1)}
    assert listed[task_id]["STATUS"] == "active"
    assert listed[task_id]["KIND"] == "cron"
    assert listed[task_id]["TITLE"] == "CLI hello"
    as_json = _json(cli("tasks", "list", "--json", "--kind", "cron"))
    assert [t["id"] for t in as_json["items"]] == [task_id]
    assert as_json["next_cursor"] is None
    paged = _json(cli("tasks", "list", "--json", "--limit", "1", "--all"))
    assert {t["id"] for t in paged["items"]} == listed.keys()

    got = _fields(_ok(cli("tasks", "get", task_id)))
    assert got["schedule"] == "cron */5 * * * * (UTC)"
    assert got["pipeline"] == "log"

    preview = _rows(_ok(cli("tasks", "preview", "--cron", "0 9 * * *", "--timezone",
                            "America/New_York", "--count", "3")))  # fmt: skip
    assert len(preview) == 3
    assert all(row["LOCAL"].endswith(("-05:00", "-04:00")) for row in preview)
    # From the moment it was created: a */5 boundary may pass between create and this call.
    since = ("--from", created["created_at"])
    coming = _json(cli("tasks", "occurrences", task_id, "--count", "2", *since, "--json"))["items"]
    assert len(coming) == 2
    assert _at(coming[0]["at"]) == _at(created["next_run_at"])

    run = _json(cli("tasks", "run", task_id, "--json"))
    assert run["status"] == "queued"
    assert finished_run(api, writer_token, run["id"])["status"] == "succeeded"

    runs = _rows(_ok(_cli(api, writer_token, process=True)("runs", "list", "--task", task_id)))
    assert [(r["ID"], r["TASK"], r["STATUS"], r["ATTEMPT"]) for r in runs] == [
        (run["id"], task_id, "succeeded", "1")
    ]
    shown_run = _ok(cli("runs", "get", run["id"]))
    assert _fields(shown_run)["status"] == "succeeded"
    [step] = _rows(shown_run.split("\n\n", 1)[1])
    assert (step["STEP"], step["TOOL"], step["STATUS"]) == ("hello", "log", "succeeded")
    run_json = _json(cli("runs", "get", run["id"], "--json"))
    assert run_json["steps"][0]["output"] == {"logged": True}
    assert "hi from the cli" in _ok(cli("runs", "logs", run["id"]))
    logs = _json(cli("runs", "logs", run["id"], "--json"))["items"]
    assert [line["message"] for line in logs if line["step_id"] == "hello"] == ["hi from the cli"]

    assert f"paused task {task_id}: status paused" in _ok(cli("tasks", "pause", task_id))
    assert _json(cli("tasks", "get", task_id, "--json"))["status"] == "paused"
    assert _json(cli("tasks", "list", "--json", "--status", "paused"))["items"][0]["id"] == task_id
    assert _json(cli("tasks", "resume", task_id, "--json"))["status"] == "active"
    before = _json(cli("tasks", "get", task_id, "--json"))["next_run_at"]
    snoozed = _json(cli("tasks", "snooze", task_id, "2h", "--json"))
    assert _at(snoozed["next_run_at"]) > _at(before)

    publish = _cli(api, writer_token, process=True)
    published = _json(publish("events", "publish", "cli.ping", "--payload", '{"n": 1}', "--json"))
    assert published["type"] == "cli.ping"
    assert published["queued"] == 1
    event_runs = _json(cli("runs", "list", "--task", event_task.group(1), "--json"))["items"]
    assert len(event_runs) == 1

    assert _json(cli("tasks", "cancel", task_id, "--json"))["status"] == "cancelled"


def test_refused_requests_exit_non_zero_with_the_problem_and_change_nothing(
    api: str,
    writer_token: str,
    make_token: Callable[..., str],
    db: psycopg.Connection[Any],
) -> None:
    cli = _cli(api, writer_token)
    reader = _cli(api, make_token("tasks:read", name="reader"))
    before = snapshot(db)
    args = ("tasks", "create", "--title", "bad", "--cron", "61 * * * *", "--payload", "{}")
    bad = _cli(api, writer_token, process=True)(*args)
    assert bad.returncode == 1
    assert bad.stdout == ""
    # The CLI shows exactly what the API said.
    body = {"title": "bad", "schedule_kind": "cron", "schedule_expr": "61 * * * *", "payload": {}}
    problem = httpx.post(f"{api}/tasks", json=body, headers=auth(writer_token)).json()
    assert problem["status"] == 422
    assert f"pao: Invalid request (422): {problem['detail']}" in bad.stderr
    for error in problem["errors"]:
        assert f"  {error['field']}: {error['message']}" in bad.stderr
    as_json = cli(*args, "--json")
    assert as_json.returncode == 1
    printed = json.loads(as_json.stdout)
    assert (printed["status"], printed["detail"]) == (422, problem["detail"])
    assert printed["errors"] == problem["errors"]

    refused = reader("tasks", "create", "--title", "x", "--cron", "0 9 * * *")
    assert refused.returncode == 1
    assert "Forbidden (403): this endpoint needs the 'tasks:write' scope" in refused.stderr

    missing = cli("tasks", "get", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    assert "Not found (404)" in missing.stderr

    assert snapshot(db) == before

    nobody = _cli(api, None)("tasks", "list")
    assert nobody.returncode == 2
    assert "set PAO_TOKEN or pass --token" in nobody.stderr
    wrong = _cli(api, "pao_not_a_real_token")("runs", "list")
    assert wrong.returncode == 1
    assert "Unauthenticated (401)" in wrong.stderr
    not_json = _cli(api, writer_token, process=True)(
        "events", "publish", "x.y", "--payload", "{oops"
    )
    assert not_json.returncode == 2
    assert "--payload is not valid JSON" in not_json.stderr
    not_an_id = cli("tasks", "pause", "../agents")
    assert not_an_id.returncode == 2
    assert "'../agents' is not an id" in not_an_id.stderr
    away = _cli("http://127.0.0.1:9", writer_token)("tasks", "list")
    assert away.returncode == 1
    assert "cannot reach the pao API at http://127.0.0.1:9" in away.stderr
