"""Assets through a real `pao api`: a large upload in flat memory, and a dropped one."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.acceptance.procs import Process, free_port, wait_ready
from tests.helpers import auth, until

MB = 1 << 20
BOUNDARY = "pao-test-boundary"


@contextmanager
def api(db_url: str, log_dir: Path) -> Iterator[tuple[str, Process]]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "PAO_PORT": str(port), "PAO_LOG_LEVEL": "info"}
    proc = Process([sys.executable, "-m", "pao", "api"], env, log_dir / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base, proc
    finally:
        proc.kill()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def pattern(size: int) -> Iterator[bytes]:
    """`size` bytes that are not all alike (so nothing compresses them away), 1 MiB at a time."""
    block = hashlib.sha256(b"seed").digest() * (MB // 32)
    sent = 0
    n = 0
    while sent < size:
        piece = (n.to_bytes(8, "big") + block[8:])[: size - sent]
        yield piece
        sent += len(piece)
        n += 1


def multipart(data: Iterator[bytes], filename: str = "big.bin") -> Iterator[bytes]:
    yield (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from data
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def counts(db: psycopg.Connection[Any]) -> tuple[int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM assets), (SELECT count(*) FROM asset_chunks)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.slow
def test_a_200_mb_upload_keeps_memory_flat_and_round_trips(
    db_url: str, make_token: Callable[..., str], tmp_path: Path, db: psycopg.Connection[Any]
) -> None:
    token = make_token("assets:read", "assets:write")
    size = 200 * MB
    headers = {**auth(token), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    with api(db_url, tmp_path) as (base, proc), httpx.Client(base_url=base, timeout=120) as http:
        # Warm up (imports, pool, first plans), then measure from there.
        warm = http.post("/assets", content=multipart(pattern(3 * MB)), headers=headers)
        assert warm.status_code == 201, warm.text
        http.get(f"/assets/{warm.json()['id']}/content", headers=auth(token)).raise_for_status()
        before = memory(proc.proc.pid)

        expected = hashlib.sha256()
        for piece in pattern(size):
            expected.update(piece)
        resp = http.post("/assets", content=multipart(pattern(size)), headers=headers)
        assert resp.status_code == 201, resp.text
        asset = resp.json()
        assert asset["size"] == size
        assert asset["sha256"] == expected.hexdigest()

        got = hashlib.sha256()
        received = 0
        with http.stream("GET", f"/assets/{asset['id']}/content", headers=auth(token)) as down:
            assert down.status_code == 200
            assert down.headers["content-length"] == str(size)
            for piece in down.iter_bytes():
                got.update(piece)
                received += len(piece)
        assert received == size
        assert got.hexdigest() == expected.hexdigest()
        after = memory(proc.proc.pid)
    growth = after["VmHWM"] - before["VmRSS"]
    assert growth < 30 * MB, f"the API's peak RSS grew by {growth / MB:.1f} MiB ({before}, {after})"
    assert counts(db) == (2, 3 + 200)


def _in_flight(db: psycopg.Connection[Any]) -> bool:
    """Whether some backend of this database is inside a transaction writing chunks."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
        " AND (query LIKE '%COPY asset_chunks%' OR state = 'idle in transaction')"
    ).fetchone()
    assert row is not None
    return int(row[0]) > 0


def test_a_connection_dropped_half_way_leaves_nothing(
    db_url: str, make_token: Callable[..., str], tmp_path: Path, db: psycopg.Connection[Any]
) -> None:
    token = make_token("assets:read", "assets:write")
    body = b"".join(multipart(pattern(8 * MB)))
    with api(db_url, tmp_path) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            sock.sendall(
                (
                    "POST /assets HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{port}\r\n"
                    f"Authorization: Bearer {token}\r\n"
                    f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
            )
            sock.sendall(body[: len(body) // 2])
            # The upload is under way: its transaction is writing chunks.
            until(lambda: _in_flight(db), "the upload's COPY to start", timeout=30)
        finally:
            sock.close()
        # The API notices the disconnect and rolls the transaction back.
        until(lambda: not _in_flight(db), "the API to give the upload up", timeout=30)
        assert counts(db) == (0, 0)
        assert db.execute("SELECT count(*) FROM asset_usage WHERE bytes > 0").fetchone() == (0,)
        # The server is still well.
        assert httpx.get(f"{base}/assets", headers=auth(token)).json()["items"] == []
        assert proc.proc.poll() is None


def test_the_python_client_uploads_and_downloads_files(
    db_url: str, make_token: Callable[..., str], tmp_path: Path
) -> None:
    import asyncio

    from pao.client import ApiProblem, PaoClient

    token = make_token("assets:read", "assets:write")
    source = tmp_path / "notes.csv"
    source.write_bytes(b"a,b\n" * (MB // 4))  # text: the declared CSV type is kept
    target = tmp_path / "back.csv"

    async def go(base: str) -> None:
        async with PaoClient.connect(base, token) as client:
            asset = await client.upload_asset(
                source, label="notes", tags=["csv", "q1"], media_type="text/csv"
            )
            assert asset["media_type"] == "text/csv"
            assert asset["size"] == source.stat().st_size
            assert asset["tags"] == ["csv", "q1"]
            assert (await client.get_asset(asset["id"]))["sha256"] == asset["sha256"]
            page = await client.list_assets(tag="q1")
            assert [a["id"] for a in page["items"]] == [asset["id"]]
            await client.download_asset(asset["id"], target)
            assert target.read_bytes() == source.read_bytes()
            link = await client.asset_link(asset["id"], expires_in=30)
            async with httpx.AsyncClient() as anonymous:
                got = await anonymous.get(link["url"])
                assert got.content == source.read_bytes()
            await client.delete_asset(asset["id"])
            target.unlink()
            with pytest.raises(ApiProblem) as gone:
                await client.download_asset(asset["id"], target)
            assert gone.value.status == 404
            assert not target.exists()

    with api(db_url, tmp_path) as (base, _):
        asyncio.run(go(base))
