"""Uploads in flight over real HTTP (uvicorn in a thread): a stalled upload is given up with a
408, the upload slots answer 429 (a process's total, and an agent's across API replicas),
and none of them leaves a row, a chunk, a byte of quota or a held slot behind."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from pao.domain import assets as logic
from pao.settings import Settings
from tests.acceptance.procs import free_port
from tests.helpers import auth, until

BOUNDARY = "upload-boundary"
FILE_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()
# More than a chunk: some of it is in the database (uncommitted) when the client stops.
SENT = b"s" * (logic.CHUNK_BYTES + logic.CHUNK_BYTES // 2)


@pytest.fixture
def owner(make_token: Callable[..., str]) -> str:
    return make_token("assets:read", "assets:write", name="owner")


@pytest.fixture
def other(make_token: Callable[..., str]) -> str:
    return make_token("assets:read", "assets:write", name="other")


@contextmanager
def serving_api(db_url: str, settings: Settings, app: FastAPI | None = None) -> Iterator[int]:
    """The API (`app`, or a new one) on a port of its own, as `pao api` serves it; yields
    the port."""
    port = free_port()
    app = app or create_app(settings, database_url=db_url)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started, "the API to listen")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def stalled_upload(
    port: int, token: str, sent: bytes = FILE_HEAD + SENT
) -> Iterator[socket.socket]:
    """An upload that sends its headers and `sent` of a larger body (by default, a file part
    and SENT of its bytes), then nothing more; the connection closes (the client goes away)
    when the block ends."""
    head = (
        f"POST /assets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {10 * len(sent)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(head + sent)
        yield sock
    finally:
        sock.close()


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body the server answers on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"the connection closed without an answer: {data!r}"
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return int(status_line.split()[1]), headers, body


def upload(http: httpx.Client | TestClient, token: str, data: bytes = b"kept") -> Any:
    file = ("f.bin", data, "application/octet-stream")
    return http.post("/assets", files={"file": file}, headers=auth(token))


def held_slots(db: psycopg.Connection[Any]) -> int:
    """Advisory locks held in this test's database (pg_locks shows the whole server's, and
    the tests beside this one take theirs)."""
    row = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    assert row is not None
    return int(row[0])


def stored(db: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """Assets, chunks, and bytes counted against quotas."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM assets), (SELECT count(*) FROM asset_chunks), "
        "(SELECT COALESCE(sum(bytes), 0) FROM asset_usage)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_a_stalled_upload_is_given_up_with_a_408_and_leaves_nothing(
    db_url: str, db: psycopg.Connection[Any], owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.uploads.IDLE_SECONDS", 1.0)
    with (
        serving_api(db_url, Settings(pool_max_size=4)) as port,
        stalled_upload(port, owner) as sock,
    ):
        until(lambda: held_slots(db) == 1, "the upload's transaction to begin")
        status, headers, body = answer(sock)
        assert status == 408, body
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["type"] == "urn:pao:problem:upload-stalled"
        assert stored(db) == (0, 0, 0)
        until(lambda: held_slots(db) == 0, "the upload's slot to be let go")
        # The slot is free again: the next upload is taken.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert upload(http, owner).status_code == 201
    assert stored(db) == (1, 1, 4)


def test_an_agents_upload_slots_are_counted_across_replicas(
    db_url: str, db: psycopg.Connection[Any], owner: str, other: str
) -> None:
    settings = Settings(pool_max_size=4, uploads_per_agent=1)
    with (
        serving_api(db_url, settings) as port,
        TestClient(create_app(settings, database_url=db_url)) as replica,
    ):
        with stalled_upload(port, owner):
            until(lambda: held_slots(db) == 1, "the first upload to take the agent's slot")
            refused = upload(replica, owner)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "PAO_UPLOADS_PER_AGENT" in refused.json()["detail"]
            assert stored(db) == (0, 0, 0)
            # Another agent's slots are its own.
            assert upload(replica, other).status_code == 201
        # The client went away: its upload is rolled back and its slot let go.
        until(lambda: held_slots(db) == 0, "the interrupted upload's slot to be let go")
        assert stored(db) == (1, 1, 4)
        assert upload(replica, owner).status_code == 201
    assert stored(db) == (2, 2, 8)


def test_a_process_receives_at_most_half_its_pool_of_uploads(
    db_url: str, db: psycopg.Connection[Any], owner: str, other: str
) -> None:
    # A pool of 3 connections: one upload at a time, whoever sends it.
    settings = Settings(pool_max_size=3, uploads_per_agent=5)
    app = create_app(settings, database_url=db_url)
    with (
        serving_api(db_url, settings, app) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        with stalled_upload(port, owner):
            until(lambda: held_slots(db) == 1, "the first upload to begin")
            refused = upload(http, other)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "already receiving 1 uploads" in refused.json()["detail"]
            # Other requests still find connections.
            listed = http.get("/assets", headers=auth(other))
            assert listed.status_code == 200, listed.text
        until(lambda: held_slots(db) == 0, "the interrupted upload to end")
        # Its transaction rolls back before the process counts its slot free.
        until(lambda: app.state.pao.uploads.busy == 0, "the process's slot to be let go")
        assert stored(db) == (0, 0, 0)
        assert upload(http, other).status_code == 201
    assert stored(db) == (1, 1, 4)


def test_an_agent_cannot_hold_a_process_slots_with_forms_stalled_before_their_file(
    db_url: str, db: psycopg.Connection[Any], owner: str, other: str
) -> None:
    """Before its file part an upload holds no connection and no slot in PostgreSQL, but it
    holds one of the process's: one agent gets no more of those than its own share."""
    settings = Settings(pool_max_size=8, uploads_per_agent=1)
    app = create_app(settings, database_url=db_url)
    label_only = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="label"\r\n\r\nslow'
    ).encode()
    with (
        serving_api(db_url, settings, app) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        with stalled_upload(port, owner, label_only):
            until(lambda: app.state.pao.uploads.busy == 1, "the first upload to be received")
            assert held_slots(db) == 0  # no transaction yet
            refused = upload(http, owner)
            assert refused.status_code == 429, refused.text
            assert "PAO_UPLOADS_PER_AGENT" in refused.json()["detail"]
            assert upload(http, other).status_code == 201
        until(lambda: app.state.pao.uploads.busy == 0, "the interrupted upload to end")
        assert upload(http, owner).status_code == 201
    assert stored(db) == (2, 2, 8)
