"""Assets in pipelines: `format: asset` inputs checked when a task is written and before a step
starts, `http.request` saving a body, MCP tools given and returning files, remote workers
reading their steps' inputs, runs listing what they made, and retention taking it away."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao import db as db_module
from pao.db import connect
from pao.domain import assets, claims
from pao.settings import Settings
from pao.store.work import Lease
from scheduler.housekeeping import prune_step
from tests.background import worker
from tests.helpers import SEED_TASK, auth, serving, snapshot, until
from worker.files import StepFiles
from worker.http_tool import ToolFailed

ROOT = Path(__file__).resolve().parents[2]
AUDIO = b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 16
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(200)) * 5
NOTES = b"first line of the notes\nsecond line\n"
TYPE = "media.transcribe"
SCHEMA = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "asset", "contentMediaType": "audio/*"},
        "lang": {"type": "string"},
    },
    "required": ["file"],
}
ALLOW = ("127.0.0.1",)
ASSET_ID = {"type": "string", "format": "asset"}


# Fixtures ------------------------------------------------------------------------------


@pytest.fixture
def tools_file(tmp_path: Path) -> str:
    path = tmp_path / "tools.json"
    probe = {"command": [sys.executable, str(ROOT / "tests" / "mcp_probe.py")]}
    path.write_text(json.dumps({"servers": {"probe": probe}}))
    return str(path)


@pytest.fixture
def settings(tools_file: str) -> Settings:
    return Settings(pool_min_size=1, pool_max_size=4, tools_file=tools_file, http_allow=ALLOW)


@pytest.fixture
def owner(make_token: Callable[..., str]) -> str:
    scopes = ("tasks:read", "tasks:write", "runs:read", "events:publish")
    return make_token(*scopes, "assets:read", "assets:write", name="owner")


@pytest.fixture
def other(make_token: Callable[..., str]) -> str:
    return make_token("tasks:read", "tasks:write", "assets:read", "assets:write", name="other")


@pytest.fixture
def claimer(make_token: Callable[..., str]) -> str:
    return make_token("work:claim", "assets:read", "assets:write", name="transcriber")


@pytest.fixture
def task_type(client: TestClient, admin_token: str) -> None:
    body = {"name": TYPE, "parameters_schema": SCHEMA, "lease_seconds": 30}
    resp = client.post("/task-types", json=body, headers=auth(admin_token))
    assert resp.status_code == 201, resp.text


class _Files(BaseHTTPRequestHandler):
    """What a pipeline downloads: audio named by Content-Disposition, notes named by the
    path, a file too large to keep, and a 404."""

    def do_GET(self) -> None:
        if self.path == "/files/talk":
            body, kind = AUDIO, "audio/mpeg"
            named = "attachment; filename*=UTF-8''r%C3%A9union.mp3"
        elif self.path == "/docs/notes.txt":
            body, kind, named = NOTES, "text/plain; charset=utf-8", ""
        elif self.path == "/big":
            body, kind, named = b"z" * 100_000, "application/octet-stream", ""
        elif self.path == "/lies.png":  # a "PNG" that is text: stored as what it is
            body, kind, named = NOTES, "image/png", ""
        else:
            self.send_error(404, "no such file")
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        if named:
            self.send_header("Content-Disposition", named)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def files() -> Iterator[str]:
    with serving(_Files) as base:
        yield base


# Helpers -------------------------------------------------------------------------------


def upload(client: TestClient, token: str, data: bytes, name: str, **form: str) -> str:
    file = (name, data, "application/octet-stream")
    resp = client.post("/assets", files={"file": file}, data=form, headers=auth(token))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def create(client: TestClient, token: str, *steps: dict[str, Any], **fields: Any) -> Any:
    body = {**SEED_TASK, "payload": {"pipeline": list(steps)}, **fields}
    return client.post("/tasks", json=body, headers=auth(token))


def created(client: TestClient, token: str, *steps: dict[str, Any], **fields: Any) -> str:
    resp = create(client, token, *steps, **fields)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def run_now(client: TestClient, token: str, task_id: str) -> str:
    resp = client.post(f"/tasks/{task_id}/run_now", headers=auth(token))
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def ended(client: TestClient, token: str, run_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/runs/{run_id}", headers=auth(token)).json()
        final = run["status"] in ("succeeded", "failed", "cancelled", "timed_out")
        return run if final and "retrying" not in (run["error"] or "") else None

    found: dict[str, Any] = until(done, f"run {run_id} to end", 30)
    return found


def claim(client: TestClient, token: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        resp = client.post(
            f"/task-types/{TYPE}/claim", json={"limit": 1, "wait_seconds": 0}, headers=auth(token)
        )
        assert resp.status_code == 200, resp.text
        items: list[dict[str, Any]] = resp.json()["items"]
        return items[0] if items else None

    item: dict[str, Any] = until(found, "a remote step to claim", 30)
    return item


def field_errors(resp: Any) -> dict[str, str]:
    assert resp.status_code == 422, resp.text
    return {e["field"]: e["message"] for e in resp.json()["errors"]}


def transcribe(file: str) -> dict[str, Any]:
    return {"id": "transcribe", "uses": TYPE, "with": {"file": file, "lang": "ro"}}


# When a task is written ----------------------------------------------------------------


@pytest.mark.usefixtures("task_type")
def test_asset_inputs_are_checked_when_a_task_is_written(
    client: TestClient,
    owner: str,
    other: str,
    admin_token: str,
    db: psycopg.Connection[Any],
) -> None:
    audio = upload(client, owner, AUDIO, "talk.mp3")
    picture = upload(client, owner, PNG, "cat.png")
    theirs = upload(client, other, AUDIO, "their.mp3")
    task = created(client, owner, transcribe(audio))

    before = snapshot(db)
    field = "payload.pipeline[0].with.file"
    wrong = field_errors(create(client, owner, transcribe(picture)))
    assert wrong == {
        field: f"asset {picture} is image/png, and this input takes audio/*; "
        "give an asset of that type"
    }
    # Another agent's asset reads exactly as one that does not exist.
    foreign = field_errors(create(client, owner, transcribe(theirs)))[field]
    unknown = str(uuid.uuid4())
    missing = field_errors(create(client, owner, transcribe(unknown)))[field]
    assert foreign == missing.replace(unknown, theirs)
    assert foreign.startswith(f"no asset {theirs} that this agent may use")
    assert (
        "is not an asset id" in field_errors(create(client, owner, transcribe("talk.mp3")))[field]
    )
    edit = client.put(
        f"/tasks/{task}",
        json={"payload": {"pipeline": [transcribe(theirs)]}},
        headers=auth(owner),
    )
    assert field in field_errors(edit)
    # An admin writing the owner's task: the owner's assets only; its own task: anyone's.
    owner_id = client.get(f"/tasks/{task}", headers=auth(owner)).json()["created_by"]
    for_owner = field_errors(create(client, admin_token, transcribe(theirs), created_by=owner_id))[
        field
    ]
    assert "that the task's owner (agent 'owner') may use" in for_owner
    # An MCP tool's schema counts too (`probe.describe` takes text/*).
    described = {"id": "d", "uses": "probe.describe", "with": {"file": audio}}
    assert "this input takes text/*" in field_errors(create(client, owner, described))[field]
    assert snapshot(db) == before  # nothing refused was kept

    created(client, admin_token, transcribe(theirs))
    # A lookup is checked when the step runs.
    created(
        client,
        owner,
        transcribe("${event.payload.file}"),
        schedule_kind="event",
        schedule_expr="clip.ready",
    )


# The pipeline end to end ------------------------------------------------------------------


@pytest.mark.usefixtures("task_type")
def test_a_download_is_saved_and_a_remote_worker_reads_it(
    client: TestClient,
    owner: str,
    claimer: str,
    make_token: Callable[..., str],
    db_url: str,
    files: str,
    tools_file: str,
) -> None:
    unrelated = upload(client, owner, PNG, "private.png")
    fetch = {
        "id": "fetch",
        "uses": "http.request",
        "with": {"url": f"{files}/files/talk", "save_body": True},
    }
    say = {"id": "say", "uses": "log", "with": {"message": "${steps.transcribe.text}"}}
    task = created(client, owner, fetch, transcribe("${steps.fetch.asset_id}"), say)
    with worker(db_url, http_allow=ALLOW, tools_file=tools_file):
        run_id = run_now(client, owner, task)
        item = claim(client, claimer)
        assert item["run_id"] == run_id
        file = item["parameters"]["file"]
        fetched = client.get(f"/runs/{run_id}", headers=auth(owner)).json()["steps"][0]["output"]
        assert fetched["asset_id"] == file
        assert fetched["status"] == 200
        assert "body" not in fetched
        assert fetched["size"] == len(AUDIO)
        assert fetched["sha256"] == hashlib.sha256(AUDIO).hexdigest()
        assert (fetched["filename"], fetched["media_type"]) == ("réunion.mp3", "audio/mpeg")

        # The claimer reads its step's input with its own token, and nothing else.
        content = client.get(f"/assets/{file}/content", headers=auth(claimer))
        assert content.status_code == 200, content.text
        assert content.content == AUDIO
        meta = client.get(f"/assets/{file}", headers=auth(claimer)).json()
        assert meta["run_id"] == run_id
        for path in (f"/assets/{unrelated}", f"/assets/{unrelated}/content"):
            assert client.get(path, headers=auth(claimer)).status_code == 404
        assert client.post(f"/assets/{file}/links", headers=auth(claimer)).status_code == 404
        # An agent that may claim but holds no claim on this step reads nothing.
        idle = make_token("work:claim", "assets:read", name="idle")
        assert client.get(f"/assets/{file}/content", headers=auth(idle)).status_code == 404
        unscoped = make_token("work:claim", name="unscoped")  # assets:read is still needed
        assert client.get(f"/assets/{file}/content", headers=auth(unscoped)).status_code == 403

        # Its result goes back as a file of the run, then the step completes.
        transcript = upload(client, claimer, "bună ziua\n".encode(), "t.txt", run_id=run_id)
        done = client.post(
            f"/claims/{item['claim_id']}/complete",
            json={"output": {"text": "bună ziua", "transcript": transcript}},
            headers=auth(claimer),
        )
        assert done.status_code == 200, done.text
        run = ended(client, owner, run_id)
        # The claim is over: the input is the owner's alone again.
        assert client.get(f"/assets/{file}/content", headers=auth(claimer)).status_code == 404

    assert run["status"] == "succeeded", run
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 3
    listed = {a["id"]: a for a in run["assets"]}
    assert set(listed) == {file, transcript}
    assert listed[file]["step_id"] == "fetch"
    assert listed[file]["sha256"] == hashlib.sha256(AUDIO).hexdigest()
    assert listed[transcript]["step_id"] == "transcribe"  # the step its uploader held
    mine = client.get(f"/assets/{file}", headers=auth(owner)).json()
    assert (
        mine["created_by"] == client.get(f"/tasks/{task}", headers=auth(owner)).json()["created_by"]
    )


@pytest.mark.usefixtures("task_type")
def test_an_asset_id_a_lookup_brings_is_checked_as_the_task_owner(
    client: TestClient,
    owner: str,
    other: str,
    db_url: str,
    db: psycopg.Connection[Any],
) -> None:
    theirs = upload(client, other, AUDIO, "their.mp3")
    picture = upload(client, owner, PNG, "cat.png")
    mine = upload(client, owner, AUDIO, "mine.mp3")
    task = created(
        client,
        owner,
        transcribe("${event.payload.file}"),
        schedule_kind="event",
        schedule_expr="clip.ready",
    )

    def run_for(file: str) -> dict[str, Any]:
        sent = client.post(
            "/events", json={"type": "clip.ready", "payload": {"file": file}}, headers=auth(owner)
        )
        assert sent.status_code == 202, sent.text
        runs = until(
            lambda: [
                r
                for r in client.get(f"/runs?task_id={task}", headers=auth(owner)).json()["items"]
                if r["id"] not in seen
            ],
            "the event's run",
        )
        seen.add(runs[0]["id"])
        return ended(client, owner, runs[0]["id"])

    seen: set[str] = set()
    with worker(db_url):
        stolen = run_for(theirs)
        wrong = run_for(picture)
    for run in (stolen, wrong):
        assert run["status"] == "failed", run
        assert "retrying" not in run["error"]  # for good: the same id fails the same way
        assert run["steps"][0]["status"] == "failed"
    assert f"no asset {theirs} that the task's owner (agent 'owner') may use" in stolen["error"]
    assert "steps.transcribe.with.file" in stolen["error"]
    assert f"asset {picture} is image/png" in wrong["error"]
    assert db.execute("SELECT count(*) FROM remote_steps").fetchone() == (0,)  # never offered
    assert len(client.get(f"/runs?task_id={task}", headers=auth(owner)).json()["items"]) == 2

    with worker(db_url):
        run_for_mine = client.post(
            "/events", json={"type": "clip.ready", "payload": {"file": mine}}, headers=auth(owner)
        )
        assert run_for_mine.status_code == 202
        until(
            lambda: db.execute("SELECT input_assets FROM remote_steps").fetchone(),
            "the step to be offered",
        )
    row = db.execute("SELECT input_assets FROM remote_steps").fetchone()
    assert row == ([uuid.UUID(mine)],)


def test_save_body_saves_only_what_it_may(
    client: TestClient,
    owner: str,
    db_url: str,
    db: psycopg.Connection[Any],
    files: str,
) -> None:
    def get(step_id: str, path: str) -> dict[str, Any]:
        url = f"{files}{path}"
        return {"id": step_id, "uses": "http.request", "with": {"url": url, "save_body": True}}

    small = created(
        client, owner, get("notes", "/docs/notes.txt"), get("lies", "/lies.png"), max_retries=0
    )
    missing = created(client, owner, get("missing", "/nope"), max_retries=0)
    big = created(client, owner, get("big", "/big"), max_retries=0)
    with worker(db_url, http_allow=ALLOW, asset_max_bytes=10_000):
        runs = {
            name: run_now(client, owner, t)
            for name, t in (("small", small), ("missing", missing), ("big", big))
        }
        done = {name: ended(client, owner, run_id) for name, run_id in runs.items()}

    notes, lies = (s["output"] for s in done["small"]["steps"])
    assert (notes["filename"], notes["media_type"], notes["size"]) == (
        "notes.txt",
        "text/plain",
        len(NOTES),
    )
    assert lies["media_type"] == "text/plain"  # what the bytes are, not what the server said
    got = client.get(f"/assets/{notes['asset_id']}/content", headers=auth(owner))
    assert got.content == NOTES
    assert {a["step_id"] for a in done["small"]["assets"]} == {"notes", "lies"}

    # A 404 keeps nothing: its body shows why, and asset_id is null.
    answer = done["missing"]["steps"][0]["output"]
    assert (done["missing"]["status"], answer["status"], answer["asset_id"]) == (
        "succeeded",
        404,
        None,
    )
    assert done["missing"]["assets"] == []

    # Past PAO_ASSET_MAX_BYTES the step fails and nothing is left behind.
    assert done["big"]["status"] == "failed"
    assert (
        "larger than PAO_ASSET_MAX_BYTES (10000 bytes); nothing was saved" in done["big"]["error"]
    )
    assert db.execute("SELECT count(*) FROM assets").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM asset_chunks").fetchone() == (2,)
    owner_bytes = len(NOTES) * 2
    assert db.execute("SELECT bytes FROM asset_usage").fetchone() == (owner_bytes,)

    # Retention: when the run's history goes, its assets, their bytes and their quota do.
    # (Row by row here, as the run is this month's: rows go before the month the retention
    # ends in, so 70 days back whatever the date. Whole months: test_history_partitions.py.)
    db.execute(
        "UPDATE due_work SET finished_at = finished_at - interval '70 days' "
        "WHERE id = (SELECT due_work_id FROM runs WHERE id = %s)",
        (runs["small"],),
    )

    async def prune() -> None:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                await prune_step(conn, now=datetime.now(UTC), retention=timedelta(days=30))
        finally:
            await conn.close()

    asyncio.run(prune())
    assert db.execute("SELECT count(*) FROM runs WHERE id = %s", (runs["small"],)).fetchone() == (
        0,
    )
    assert db.execute("SELECT count(*) FROM assets").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM asset_chunks").fetchone() == (0,)
    assert db.execute("SELECT bytes FROM asset_usage").fetchone() == (0,)


def test_mcp_tools_are_given_assets_and_return_files(
    client: TestClient, owner: str, db_url: str, files: str, tools_file: str
) -> None:
    steps = [
        {
            "id": "fetch",
            "uses": "http.request",
            "with": {"url": f"{files}/docs/notes.txt", "save_body": True},
        },
        {"id": "describe", "uses": "probe.describe", "with": {"file": "${steps.fetch.asset_id}"}},
        {
            "id": "draw",
            "uses": "probe.draw",
            "with": {"caption": "${steps.describe.received.first_line}"},
        },
    ]
    task = created(client, owner, *steps)
    with worker(db_url, http_allow=ALLOW, tools_file=tools_file):
        run = ended(client, owner, run_now(client, owner, task))
    assert run["status"] == "succeeded", run
    fetched, described, drawn = (s["output"] for s in run["steps"])
    # The tool got the id, and the content in its call's _meta.
    assert described == {
        "file": fetched["asset_id"],
        "received": {
            "size": len(NOTES),
            "sha256": hashlib.sha256(NOTES).hexdigest(),
            "media_type": "text/plain",
            "first_line": "first line of the notes",
        },
    }
    # Its image, audio and resource are the run's assets; the text stays in the output.
    assert drawn["text"] == "first line of the notes"
    kinds = [(a["filename"], a["media_type"]) for a in drawn["assets"]]
    assert kinds == [
        ("probe.draw-1.png", "image/png"),
        ("probe.draw-2.mp3", "audio/mpeg"),
        ("notes.txt", "text/plain"),
    ]
    image = drawn["assets"][0]["asset_id"]
    got = client.get(f"/assets/{image}/content", headers=auth(owner))
    assert got.content.startswith(b"\x89PNG")
    assert sorted(a["step_id"] for a in run["assets"]) == ["draw", "draw", "draw", "fetch"]


def test_a_worker_that_lost_its_lease_saves_nothing(
    client: TestClient, owner: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    task = created(client, owner, {"id": "s", "uses": "log", "with": {"message": "x"}})
    run_id = run_now(client, owner, task)
    work_id = db.execute("SELECT due_work_id FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert work_id is not None

    async def save() -> None:
        pool = db_module.make_pool(db_url, min_size=1, max_size=2)
        await pool.open(wait=True)
        try:
            files = StepFiles(
                pool,
                run_id=uuid.UUID(run_id),
                lease=Lease(work_id[0], 1, "a-worker-that-lost-it"),
                limits=assets.Limits(max_bytes=1 << 20, quota_bytes=1 << 20),
                inline_max_bytes=1 << 20,
            )

            async def chunks() -> AsyncIterator[bytes]:
                yield NOTES

            with pytest.raises(ToolFailed, match="lease was lost; nothing was saved"):
                await files.save("s", chunks(), filename="n.txt", media_type=None)
        finally:
            await pool.close()

    asyncio.run(save())
    assert db.execute("SELECT count(*) FROM assets").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM asset_chunks").fetchone() == (0,)


@pytest.mark.usefixtures("task_type")
def test_a_claim_reads_its_inputs_only_while_it_holds_them(
    client: TestClient, owner: str, claimer: str, db_url: str, db: psycopg.Connection[Any]
) -> None:
    audio = upload(client, owner, AUDIO, "talk.mp3")
    task = created(client, owner, transcribe(audio))
    run_id = run_now(client, owner, task)

    async def offer() -> None:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                await claims.offer_step(
                    conn,
                    run_id=uuid.UUID(run_id),
                    step_index=0,
                    step_id="transcribe",
                    task_type=TYPE,
                    parameters={"file": audio},
                )
        finally:
            await conn.close()

    asyncio.run(offer())
    path = f"/assets/{audio}/content"
    assert client.get(path, headers=auth(claimer)).status_code == 404  # offered, not claimed
    item = claim(client, claimer)
    assert client.get(path, headers=auth(claimer)).status_code == 200
    upload(client, claimer, b"partial transcript\n", "t.txt", run_id=run_id)  # its output
    # The lease runs out (by the database's clock): the claim, and what it could read, end.
    db.execute("UPDATE remote_steps SET lease_expires_at = now() - interval '1 second'")
    assert client.get(path, headers=auth(claimer)).status_code == 404
    # Nor may it attach files to the run any longer (before it is offered again).
    late = client.post(
        "/assets",
        files={"file": ("late.txt", b"too late\n", "text/plain")},
        data={"run_id": run_id},
        headers=auth(claimer),
    )
    assert late.status_code == 422, late.text
    assert [e["field"] for e in late.json()["errors"]] == ["run_id"]
    lost = client.post(f"/claims/{item['claim_id']}/heartbeat", headers=auth(claimer))
    assert lost.status_code == 409


def test_an_mcp_tool_is_never_sent_another_agents_asset(
    client: TestClient, owner: str, other: str, db_url: str, tools_file: str
) -> None:
    theirs = upload(client, other, NOTES, "their-notes.txt")
    mine = upload(client, owner, NOTES, "notes.txt")
    describe = {"id": "describe", "uses": "probe.describe", "with": {"file": "${event.payload.f}"}}
    task = created(
        client, owner, describe, schedule_kind="event", schedule_expr="doc.ready", max_retries=0
    )
    with worker(db_url, tools_file=tools_file):
        for file in (theirs, mine):
            sent = client.post(
                "/events", json={"type": "doc.ready", "payload": {"f": file}}, headers=auth(owner)
            )
            assert sent.status_code == 202, sent.text
        runs = until(
            lambda: (
                items
                if len(
                    items := client.get(f"/runs?task_id={task}", headers=auth(owner)).json()[
                        "items"
                    ]
                )
                == 2
                else None
            ),
            "both runs",
        )
        done = {
            r["steps"][0]["input"]["file"]: r for r in (ended(client, owner, x["id"]) for x in runs)
        }
    refused, allowed = done[theirs], done[mine]
    assert refused["status"] == "failed"
    assert f"no asset {theirs} that the task's owner (agent 'owner') may use" in refused["error"]
    assert "output" not in refused["steps"][0]  # the tool was never called
    assert allowed["status"] == "succeeded", allowed
    assert allowed["steps"][0]["output"]["received"]["sha256"] == hashlib.sha256(NOTES).hexdigest()


def test_a_step_names_at_most_a_hundred_assets(
    client: TestClient, owner: str, admin_token: str
) -> None:
    schema = {"type": "object", "properties": {"files": {"type": "array", "items": ASSET_ID}}}
    made = client.post(
        "/task-types",
        json={"name": "media.album", "parameters_schema": schema},
        headers=auth(admin_token),
    )
    assert made.status_code == 201, made.text
    audio = upload(client, owner, AUDIO, "talk.mp3")
    step = {"id": "album", "uses": "media.album", "with": {"files": [audio] * 100}}
    created(client, owner, step)
    step["with"] = {"files": [audio] * 101}
    errors = field_errors(create(client, owner, step))
    assert errors == {
        "payload.pipeline[0].with.files[100]": "a step may name at most 100 assets; this one "
        "names 101. Split the work over several steps"
    }


# Sending an asset ---------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    """Takes request bodies: /echo answers with what it got (and keeps it in `received`),
    /moved sends the client on to /echo with a 307 (the body must come again)."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        if self.path == "/moved":
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(307)
            self.send_header("Location", "/echo")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers["Content-Length"])
        got = bytearray()
        while len(got) < length:
            got += self.rfile.read(min(65536, length - len(got)))
        seen = {
            "size": len(got),
            "sha256": hashlib.sha256(got).hexdigest(),
            "content_type": self.headers.get("Content-Type"),
            "chunked": self.headers.get("Transfer-Encoding"),
        }
        type(self).received.append(seen)
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.received = []
    with serving(_Receiver) as base:
        yield base


def post_asset(step_id: str, url: str, asset: str, **extra: Any) -> dict[str, Any]:
    body = {"method": "POST", "url": url, "body_asset": asset, **extra}
    return {"id": step_id, "uses": "http.request", "with": body}


def test_http_request_sends_an_asset_as_its_body(
    client: TestClient,
    owner: str,
    other: str,
    db_url: str,
    db: psycopg.Connection[Any],
    files: str,
    receiver: str,
) -> None:
    # Three chunks and a bit: streamed a chunk at a time, never whole.
    big = bytes(range(256)) * (3 * assets.CHUNK_BYTES // 256) + b"the end"
    mine = upload(client, owner, big, "big.bin")
    notes = upload(client, owner, NOTES, "notes.txt")
    theirs = upload(client, other, NOTES, "theirs.txt")

    # Refused when the task is written: another agent's asset reads as one that does not
    # exist, and a body is given one way only.
    before = snapshot(db)
    field = "payload.pipeline[0].with.body_asset"
    foreign = field_errors(create(client, owner, post_asset("s", f"{receiver}/echo", theirs)))
    assert foreign[field].startswith(f"no asset {theirs} that this agent may use")
    unknown = str(uuid.uuid4())
    missing = field_errors(create(client, owner, post_asset("s", f"{receiver}/echo", unknown)))
    assert missing[field] == foreign[field].replace(theirs, unknown)
    both = field_errors(
        create(client, owner, post_asset("s", f"{receiver}/echo", mine, body="text"))
    )
    assert both["payload.pipeline[0].with"].startswith("use only one of: body, body_asset")
    slow_call = {"url": f"{receiver}/echo", "timeout_seconds": 600}
    assert (
        create(client, owner, {"id": "s", "uses": "http.request", "with": slow_call}).status_code
        == 422
    )
    assert snapshot(db) == before
    # Sending a file may take as long as fetching one.
    created(client, owner, post_asset("s", f"{receiver}/echo", mine, timeout_seconds=600))

    task = created(
        client,
        owner,
        post_asset("whole", f"{receiver}/echo", mine),
        # Its own Content-Type wins; a 307 sends the body again.
        post_asset("moved", f"{receiver}/moved", notes, headers={"content-type": "text/csv"}),
        # A file the run downloads, passed on by a lookup (checked when the step runs).
        {
            "id": "fetch",
            "uses": "http.request",
            "with": {"url": f"{files}/files/talk", "save_body": True},
        },
        post_asset("forward", f"{receiver}/echo", "${steps.fetch.asset_id}"),
        max_retries=0,
    )
    with worker(db_url, http_allow=ALLOW):
        run = ended(client, owner, run_now(client, owner, task))
    assert run["status"] == "succeeded", run["error"]
    outputs = {s["id"]: s["output"] for s in run["steps"]}
    expect = {
        "whole": (len(big), hashlib.sha256(big).hexdigest(), "application/octet-stream"),
        "moved": (len(NOTES), hashlib.sha256(NOTES).hexdigest(), "text/csv"),
        "forward": (len(AUDIO), hashlib.sha256(AUDIO).hexdigest(), "audio/mpeg"),
    }
    for step_id, (size, digest, kind) in expect.items():
        got = outputs[step_id]["json"]
        assert (got["size"], got["sha256"], got["content_type"]) == (size, digest, kind), step_id
        assert got["chunked"] is None  # sent with its length, not chunked
    assert len(_Receiver.received) == 3


def test_http_request_refuses_to_send_what_the_owner_may_not(
    client: TestClient, owner: str, other: str, db_url: str, receiver: str
) -> None:
    """An id a lookup brings (an event's payload) is checked as the task's owner before a
    byte is sent: another agent's asset fails the step for good."""
    theirs = upload(client, other, NOTES, "theirs.txt")
    task = created(
        client,
        owner,
        post_asset("send", f"{receiver}/echo", "${event.payload.file}"),
        schedule_kind="event",
        schedule_expr="file.ready",
        max_retries=0,
    )
    with worker(db_url, http_allow=ALLOW):
        resp = client.post(
            "/events", json={"type": "file.ready", "payload": {"file": theirs}}, headers=auth(owner)
        )
        assert resp.status_code in (201, 202), resp.text
        run_id = until(
            lambda: next(
                iter(client.get(f"/runs?task_id={task}", headers=auth(owner)).json()["items"]),
                None,
            ),
            "the event's run",
        )["id"]
        run = ended(client, owner, run_id)
    assert run["status"] == "failed"
    assert f"no asset {theirs}" in run["error"]
    assert _Receiver.received == []
