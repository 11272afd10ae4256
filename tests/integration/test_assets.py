"""Assets over HTTP: upload, list, read (ranges, validators), delete, signed links, scopes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
import zipfile
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
from fastapi.testclient import TestClient

from pao import links
from pao.db import connect
from pao.domain import assets as logic
from pao.errors import QuotaExceeded
from tests.helpers import auth, until_async

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(200)) * 50


@pytest.fixture
def owner_token(make_token: Callable[..., str]) -> str:
    return make_token("assets:read", "assets:write", "runs:read", "tasks:write", name="owner")


@pytest.fixture
def other_token(make_token: Callable[..., str]) -> str:
    return make_token("assets:read", "assets:write", name="other")


def upload(
    client: TestClient,
    token: str,
    data: bytes = PNG,
    *,
    filename: str = "picture.png",
    content_type: str | None = "image/png",
    label: str | None = "a picture",
    tags: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    # httpx guesses a part's type from the file name when given none: octet-stream is how
    # a client says "sniff it".
    file = (filename, data, content_type or "application/octet-stream")
    form: dict[str, Any] = {**(extra or {})}
    if label is not None:
        form["label"] = label
    if tags:
        form["tags"] = tags
    return client.post("/assets", files={"file": file}, data=form, headers=auth(token))


def stored(db: psycopg.Connection[Any]) -> tuple[int, int]:
    assets = db.execute("SELECT count(*) FROM assets").fetchone()
    chunks = db.execute("SELECT count(*) FROM asset_chunks").fetchone()
    assert assets is not None
    assert chunks is not None
    return int(assets[0]), int(chunks[0])


def test_upload_then_read_back(client: TestClient, owner_token: str) -> None:
    resp = upload(client, owner_token, tags=["cats, dogs", "birds", "cats"])
    assert resp.status_code == 201, resp.text
    asset = resp.json()
    assert set(asset) == {
        "id",
        "label",
        "filename",
        "media_type",
        "size",
        "sha256",
        "tags",
        "status",
        "created_by",
        "run_id",
        "created_at",
    }
    assert asset["media_type"] == "image/png"
    assert asset["size"] == len(PNG)
    assert asset["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert asset["tags"] == ["cats", "dogs", "birds"]
    assert asset["status"] == "ready"
    assert asset["label"] == "a picture"
    assert resp.headers["location"] == f"/assets/{asset['id']}"

    assert client.get(f"/assets/{asset['id']}", headers=auth(owner_token)).json() == asset
    content = client.get(f"/assets/{asset['id']}/content", headers=auth(owner_token))
    assert content.status_code == 200
    assert content.content == PNG
    assert content.headers["etag"] == f'"{asset["sha256"]}"'
    assert content.headers["content-length"] == str(len(PNG))
    assert content.headers["content-type"] == "image/png"
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["content-disposition"] == (
        "attachment; filename=\"picture.png\"; filename*=UTF-8''picture.png"
    )


def test_a_file_of_many_chunks_round_trips(
    client: TestClient, owner_token: str, db: psycopg.Connection[Any]
) -> None:
    data = bytes(range(256)) * (3 * logic.CHUNK_BYTES // 256) + b"tail"
    resp = upload(client, owner_token, data, filename="blob.bin", content_type=None)
    assert resp.status_code == 201, resp.text
    asset = resp.json()
    assert asset["media_type"] == "application/octet-stream"
    assert stored(db) == (1, 4)
    got = client.get(f"/assets/{asset['id']}/content", headers=auth(owner_token))
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()
    # A range across a chunk boundary.
    start = logic.CHUNK_BYTES - 10
    part = client.get(
        f"/assets/{asset['id']}/content",
        headers={**auth(owner_token), "Range": f"bytes={start}-{start + 19}"},
    )
    assert part.status_code == 206
    assert part.content == data[start : start + 20]


def test_list_filters_and_pages(client: TestClient, owner_token: str) -> None:
    ids = []
    for i in range(5):
        body = upload(
            client,
            owner_token,
            f"note {i}\n".encode(),
            filename=f"n{i}.txt",
            content_type="text/plain",
            label="odd" if i % 2 else "even",
            tags=["notes", f"n{i}"],
        ).json()
        ids.append(body["id"])
    upload(client, owner_token, PNG, tags=["pictures"])
    h = auth(owner_token)
    assert len(client.get("/assets", headers=h).json()["items"]) == 6
    notes = client.get("/assets", params={"tag": "notes"}, headers=h).json()["items"]
    assert [a["id"] for a in notes] == ids[::-1]
    odd = client.get("/assets", params={"label": "odd"}, headers=h).json()["items"]
    assert {a["id"] for a in odd} == {ids[1], ids[3]}
    images = client.get("/assets", params={"media_type": "image/*"}, headers=h).json()["items"]
    assert [a["media_type"] for a in images] == ["image/png"]
    texts = client.get("/assets", params={"media_type": "text/plain"}, headers=h).json()
    assert len(texts["items"]) == 5
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "tag": "notes"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/assets", params=params, headers=h).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    bad = client.get("/assets", params={"cursor": "nonsense"}, headers=h)
    assert bad.status_code == 422


def test_delete_frees_the_bytes_and_the_quota(
    client: TestClient, owner_token: str, db: psycopg.Connection[Any]
) -> None:
    asset = upload(client, owner_token).json()
    assert stored(db)[0] == 1
    usage = db.execute("SELECT bytes FROM asset_usage").fetchone()
    assert usage == (len(PNG),)
    h = auth(owner_token)
    assert client.delete(f"/assets/{asset['id']}", headers=h).status_code == 204
    assert stored(db) == (0, 0)
    assert db.execute("SELECT bytes FROM asset_usage").fetchone() == (0,)
    assert client.get(f"/assets/{asset['id']}", headers=h).status_code == 404
    assert client.delete(f"/assets/{asset['id']}", headers=h).status_code == 404


def test_another_agents_asset_is_not_found_everywhere(
    client: TestClient, owner_token: str, other_token: str, admin_token: str
) -> None:
    asset = upload(client, owner_token).json()
    path = f"/assets/{asset['id']}"
    theirs = auth(other_token)
    for method, url in (
        ("GET", path),
        ("GET", f"{path}/content"),
        ("HEAD", f"{path}/content"),
        ("DELETE", path),
        ("POST", f"{path}/links"),
    ):
        resp = client.request(method, url, headers=theirs)
        assert resp.status_code == 404, (method, url, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    assert client.get("/assets", headers=theirs).json()["items"] == []
    # The admin sees it, and the owner still has it.
    assert client.get(path, headers=auth(admin_token)).status_code == 200
    assert client.get(path, headers=auth(owner_token)).status_code == 200


def test_scopes_are_enforced(
    client: TestClient, make_token: Callable[..., str], owner_token: str
) -> None:
    asset = upload(client, owner_token).json()
    path = f"/assets/{asset['id']}"
    reader = auth(make_token("assets:read", name="reader"))
    writer = auth(make_token("assets:write", name="writer"))
    nothing = auth(make_token("tasks:read", name="nothing"))
    for headers, method, url, scope in (
        (reader, "POST", "/assets", "assets:write"),
        (reader, "DELETE", path, "assets:write"),
        (writer, "GET", "/assets", "assets:read"),
        (writer, "GET", path, "assets:read"),
        (writer, "GET", f"{path}/content", "assets:read"),
        (writer, "HEAD", f"{path}/content", "assets:read"),
        (writer, "POST", f"{path}/links", "assets:read"),
        (nothing, "GET", path, "assets:read"),
    ):
        resp = client.request(method, url, headers=headers)
        assert resp.status_code == 403, (method, url)
        if method != "HEAD":  # a HEAD answer has no body to say why
            assert scope in resp.json()["detail"]
    assert client.get(path, headers=auth(owner_token)).status_code == 200
    assert client.get("/assets").status_code == 401


# Ranges and validators --------------------------------------------------------------------

DATA = bytes(range(256)) * 8  # 2048 bytes


@pytest.fixture
def data_asset(client: TestClient, owner_token: str) -> str:
    resp = upload(client, owner_token, DATA, filename="d.bin", content_type=None)
    assert resp.status_code == 201
    return str(resp.json()["id"])


@pytest.mark.parametrize(
    ("header", "status", "body", "content_range"),
    [
        ("bytes=0-0", 206, DATA[:1], "bytes 0-0/2048"),
        ("bytes=-500", 206, DATA[-500:], "bytes 1548-2047/2048"),
        ("bytes=100-199", 206, DATA[100:200], "bytes 100-199/2048"),
        ("bytes=2000-", 206, DATA[2000:], "bytes 2000-2047/2048"),
        ("bytes=2000-99999", 206, DATA[2000:], "bytes 2000-2047/2048"),
        ("bytes=0-99999999999999999999999", 206, DATA, "bytes 0-2047/2048"),
        ("bytes=-99999999999999999999999", 206, DATA, "bytes 0-2047/2048"),
        ("BYTES = 5-9", 206, DATA[5:10], "bytes 5-9/2048"),
        # Unsatisfiable: 416 with the size.
        ("bytes=2048-", 416, None, "bytes */2048"),
        ("bytes=5000-6000", 416, None, "bytes */2048"),
        ("bytes=99999999999999999999999-", 416, None, "bytes */2048"),
        ("bytes=-0", 416, None, "bytes */2048"),
        # Ignored (RFC 9110 14.2): the whole content.
        ("bytes=5-2", 200, DATA, None),
        ("bytes=abc", 200, DATA, None),
        ("items=0-1", 200, DATA, None),
        ("bytes=0-1,5-9", 200, DATA, None),
        ("bytes=", 200, DATA, None),
        ("", 200, DATA, None),
        ("bytes=--1", 200, DATA, None),
        ("bytes=1-2-3", 200, DATA, None),
    ],
)
def test_ranges(
    client: TestClient,
    owner_token: str,
    data_asset: str,
    header: str,
    status: int,
    body: bytes | None,
    content_range: str | None,
) -> None:
    resp = client.get(
        f"/assets/{data_asset}/content", headers={**auth(owner_token), "Range": header}
    )
    assert resp.status_code == status, resp.text
    assert resp.headers.get("content-range") == content_range
    if body is not None:
        assert resp.content == body
        assert resp.headers["content-length"] == str(len(body))
    else:
        assert resp.headers["content-type"] == "application/problem+json"


def test_validators(client: TestClient, owner_token: str, data_asset: str) -> None:
    h = auth(owner_token)
    url = f"/assets/{data_asset}/content"
    etag = client.get(url, headers=h).headers["etag"]
    assert etag == f'"{hashlib.sha256(DATA).hexdigest()}"'
    for match in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        resp = client.get(url, headers={**h, "If-None-Match": match})
        assert resp.status_code == 304, match
        assert resp.content == b""
        assert resp.headers["etag"] == etag
    assert client.get(url, headers={**h, "If-None-Match": '"other"'}).status_code == 200
    # If-Range: the range only while the tag still matches.
    ranged = {**h, "Range": "bytes=0-9"}
    assert client.get(url, headers={**ranged, "If-Range": etag}).status_code == 206
    whole = client.get(url, headers={**ranged, "If-Range": '"old"'})
    assert whole.status_code == 200
    assert whole.content == DATA


SAME_HEADERS = (
    "etag",
    "accept-ranges",
    "content-length",
    "content-range",
    "content-type",
    "content-disposition",
    "x-content-type-options",
    "content-security-policy",
    "cache-control",
)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 200),
        ("bytes=0-0", 206),
        ("bytes=-500", 206),
        ("bytes=100-199", 206),
        ("bytes=2048-", 416),
        ("bytes=0-1,5-9", 200),
        ("bytes=5-2", 200),
    ],
)
def test_head_answers_as_get_would_without_a_body(
    client: TestClient,
    owner_token: str,
    data_asset: str,
    db: psycopg.Connection[Any],
    header: str | None,
    status: int,
) -> None:
    url = f"/assets/{data_asset}/content"
    h = {**auth(owner_token), **({"Range": header} if header else {})}
    got = client.get(url, headers=h)
    assert got.status_code == status
    # No byte is read: with its chunks gone, HEAD still says what GET said.
    db.execute("DELETE FROM asset_chunks WHERE asset_id = %s", (data_asset,))
    head = client.head(url, headers=h)
    assert head.status_code == status, head.text
    for name in SAME_HEADERS:
        if status == 416 and name == "content-length":
            continue  # a problem's own length
        assert head.headers.get(name) == got.headers.get(name), name
    if status != 416:
        assert head.content == b""


def test_head_honours_validators_and_signed_links(
    client: TestClient, owner_token: str, data_asset: str
) -> None:
    h = auth(owner_token)
    url = f"/assets/{data_asset}/content"
    etag = client.head(url, headers=h).headers["etag"]
    assert client.head(url, headers={**h, "If-None-Match": etag}).status_code == 304
    stale = client.head(url, headers={**h, "Range": "bytes=0-9", "If-Range": '"old"'})
    assert (stale.status_code, stale.headers["content-length"]) == (200, str(len(DATA)))
    link = urlsplit(_link(client, owner_token, data_asset, expires_in=60).json()["url"])
    head = client.head(f"{link.path}?{link.query}", headers={"Range": "bytes=-10"})
    assert head.status_code == 206
    assert head.headers["content-range"] == "bytes 2038-2047/2048"
    assert head.headers["etag"] == etag
    assert head.content == b""
    forged = client.head(f"{link.path}?{link.query}".replace("signature=", "signature=0"))
    assert forged.status_code == 403


# Signed links ----------------------------------------------------------------------------


def _link(client: TestClient, token: str, asset_id: str, **body: Any) -> Any:
    return client.post(f"/assets/{asset_id}/links", json=body, headers=auth(token))


def test_a_signed_link_works_without_a_token(
    client: TestClient, owner_token: str, data_asset: str
) -> None:
    resp = _link(client, owner_token, data_asset, expires_in=60)
    assert resp.status_code == 201, resp.text
    link = resp.json()
    assert set(link) == {"url", "expires_at"}
    url = urlsplit(link["url"])
    got = client.get(f"{url.path}?{url.query}")
    assert got.status_code == 200
    assert got.content == DATA
    assert got.headers["content-disposition"].startswith("attachment")
    part = client.get(f"{url.path}?{url.query}", headers={"Range": "bytes=-10"})
    assert part.status_code == 206
    assert part.content == DATA[-10:]
    for bad in ({"expires_in": 0}, {"expires_in": 3601}, {"expires_in": "60"}, {"x": 1}):
        assert _link(client, owner_token, data_asset, **bad).status_code == 422, bad


def test_a_changed_character_anywhere_is_refused(
    client: TestClient, owner_token: str, data_asset: str
) -> None:
    url = urlsplit(_link(client, owner_token, data_asset, expires_in=600).json()["url"])
    asset_id = url.path.rsplit("/", 1)[1]
    query = dict(parse_qsl(url.query))
    expires, sig = query["expires"], query["signature"]

    def fetch(ident: str, until: str, signature: str) -> int:
        return client.get(
            f"/asset-links/{ident}", params={"expires": until, "signature": signature}
        ).status_code

    assert fetch(asset_id, expires, sig) == 200

    def variants(text: str) -> list[str]:
        out = []
        for i, c in enumerate(text):
            for other in {"0", "a", "A", "f", "-", "_", "9"} - {c}:
                out.append(text[:i] + other + text[i + 1 :])
        return out

    for changed in variants(sig):
        assert fetch(asset_id, expires, changed) == 403, changed
    for changed in variants(asset_id):
        assert fetch(changed, expires, sig) == 403, changed
    for changed in [*variants(expires), expires + "0", "0" + expires, ""]:
        assert fetch(asset_id, changed, sig) == 403, changed
    assert fetch(asset_id, expires, sig + "A") == 403
    assert fetch(asset_id, expires, sig[:-1]) == 403


def test_an_expired_link_is_refused(
    client: TestClient, owner_token: str, data_asset: str, db_url: str
) -> None:
    _link(client, owner_token, data_asset, expires_in=1)  # the key exists from here on

    async def key() -> bytes:
        conn = await connect(db_url)
        try:
            return await logic.link_key(conn, None)
        finally:
            await conn.close()

    secret = asyncio.run(key())
    import time

    now = int(time.time())
    for expires, status in ((now - 1, 403), (now - 3600, 403), (now + 30, 200)):
        ident, until, sig = links.sign(secret, uuid.UUID(data_asset), expires)
        resp = client.get(f"/asset-links/{ident}", params={"expires": until, "signature": sig})
        assert resp.status_code == status, expires


def test_a_link_to_a_deleted_asset_is_gone(
    client: TestClient, owner_token: str, data_asset: str
) -> None:
    url = urlsplit(_link(client, owner_token, data_asset).json()["url"])
    assert client.delete(f"/assets/{data_asset}", headers=auth(owner_token)).status_code == 204
    assert client.get(f"{url.path}?{url.query}").status_code == 404


def test_the_configured_secret_signs_links(db_url: str, owner_token: str) -> None:
    from api.app import create_app
    from pao.settings import Settings

    settings = Settings(pool_max_size=4, asset_link_secret="s" * 40)
    with TestClient(create_app(settings, database_url=db_url)) as c:
        created = upload(c, owner_token, DATA, content_type=None)
        assert created.status_code == 201, created.text
        asset = created.json()
        url = urlsplit(_link(c, owner_token, asset["id"]).json()["url"])
        assert c.get(f"{url.path}?{url.query}").status_code == 200
        secret = hashlib.sha256(b"pao-asset-links\0" + b"s" * 40).digest()
        query = dict(parse_qsl(url.query))
        assert query["signature"] == links.signature(secret, asset["id"], query["expires"])


# Media types and names -------------------------------------------------------------------


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (50 << 20))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "declared", "stored"),
    [
        (PNG, "image/png", "image/png"),
        (PNG, None, "image/png"),
        (PNG, "application/octet-stream", "image/png"),
        (b"a,b\n1,2\n", "text/csv", "text/csv"),
        (b'{"a": 1}', "application/json", "application/json"),
        (b"plain words", None, "text/plain"),
        ("héllo wörld".encode(), "text/markdown; charset=utf-8", "text/markdown"),
        (b"<!DOCTYPE html><script>alert(1)</script>", None, "text/html"),
        (b"  <html><body>hi</body></html>", "text/plain", "text/html"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>', None, "image/svg+xml"),
        (b'<?xml version="1.0"?><svg></svg>', "image/svg+xml", "image/svg+xml"),
        (b'<?xml version="1.0"?><a/>', "text/xml", "application/xml"),
        (b"\x00\x01\x02\x03binary", None, "application/octet-stream"),
        # Binary of a format not known here: the uploader names it.
        (b"\x00\x01\x02\x03binary", "audio/x-unknown", "audio/x-unknown"),
        (b"", None, "text/plain"),
        (b"GIF89a" + b"\0" * 40, "image/gif", "image/gif"),
    ],
)
def test_media_type_is_sniffed(
    client: TestClient, owner_token: str, data: bytes, declared: str | None, stored: str
) -> None:
    resp = upload(client, owner_token, data, filename="x", content_type=declared)
    assert resp.status_code == 201, resp.text
    assert resp.json()["media_type"] == stored


@pytest.mark.parametrize(
    ("data", "declared"),
    [
        (PNG, "image/jpeg"),
        (PNG, "text/plain"),
        (b"<html><script>alert(1)</script></html>", "image/png"),
        (b"just text", "image/png"),
        (b"\x00\x01\x02binary", "text/plain"),
        (b"\x00\x01\x02binary", "application/json"),
        (PNG, "not a type"),
    ],
)
def test_a_declared_type_the_bytes_contradict_is_refused(
    client: TestClient,
    owner_token: str,
    db: psycopg.Connection[Any],
    data: bytes,
    declared: str,
) -> None:
    resp = upload(client, owner_token, data, content_type=declared)
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "file"
    assert stored(db) == (0, 0)


def test_html_in_a_png_is_never_served_inline(client: TestClient, owner_token: str) -> None:
    page = b"<html><body><script>document.cookie</script></body></html>"
    resp = upload(client, owner_token, page, filename="cat.png", content_type=None)
    assert resp.status_code == 201
    asset = resp.json()
    assert asset["media_type"] == "text/html"
    got = client.get(f"/assets/{asset['id']}/content", headers=auth(owner_token))
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in got.headers["content-security-policy"]
    assert got.content == page


def test_a_zip_bomb_is_stored_as_bytes(client: TestClient, owner_token: str) -> None:
    bomb = _zip_bomb()
    assert len(bomb) < 200_000
    resp = upload(client, owner_token, bomb, filename="bomb.zip", content_type="application/zip")
    assert resp.status_code == 201, resp.text
    asset = resp.json()
    assert asset["media_type"] == "application/zip"
    assert asset["size"] == len(bomb)
    got = client.get(f"/assets/{asset['id']}/content", headers=auth(owner_token))
    assert got.content == bomb


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32.dll", "system32.dll"),
        ("/abs/path/x.txt", "x.txt"),
        ("a\x00b.txt", "ab.txt"),
        ("tab\there\x7f.txt", "tabhere.txt"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("a\uff0fb.txt", "a_b.txt"),
        ("a\u2215b.txt", "a_b.txt"),
        ("..", ""),
        ("  . ", ""),
        ('quo"te;.txt', 'quo"te;.txt'),
        ("café.txt", "café.txt"),
        # httpx writes CR, LF and '"' percent-encoded (as browsers do): kept as text.
        ("evil%0D%0ASet-Cookie: x=1.txt", "evil%0D%0ASet-Cookie: x=1.txt"),
    ],
)
def test_hostile_filenames_are_made_safe(
    client: TestClient, owner_token: str, given: str, kept: str
) -> None:
    # Written by hand: the name's bytes reach the server exactly as given.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="'
        + given.replace("\\", "\\\\").replace('"', '\\"').encode()
        + b'"\r\nContent-Type: text/plain\r\n\r\ntext\r\n--b--\r\n'
    )
    headers = {**auth(owner_token), "Content-Type": "multipart/form-data; boundary=b"}
    resp = client.post("/assets", content=body, headers=headers)
    assert resp.status_code == 201, resp.text
    asset = resp.json()
    assert asset["filename"] == kept
    got = client.get(f"/assets/{asset['id']}/content", headers=auth(owner_token))
    disposition = got.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert all(c >= " " and c != "\x7f" for c in disposition)
    ascii_name = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert "/" not in ascii_name
    assert "\\" not in ascii_name
    assert ascii_name.isascii()
    if not kept:
        assert f'filename="asset-{asset["id"]}"' in disposition


def test_a_long_name_is_cut_keeping_its_extension(client: TestClient, owner_token: str) -> None:
    resp = upload(client, owner_token, b"x", filename="é" * 5_000 + ".txt", content_type=None)
    assert resp.status_code == 201  # a 10 KB name

    name = resp.json()["filename"]
    assert name.endswith(".txt")
    assert len(name.encode()) <= 255
    assert name[:-4] == "é" * len(name[:-4])
    # A header over 16 KiB is refused.
    resp = upload(client, owner_token, b"x", filename="é" * 9_000 + ".txt", content_type=None)
    assert resp.status_code == 422


# Refused uploads leave nothing -------------------------------------------------------------


def test_over_the_size_limit_is_413(db_url: str, owner_token: str, db: Any) -> None:
    from api.app import create_app
    from pao.settings import Settings

    settings = Settings(pool_max_size=4, asset_max_bytes=100_000)
    with TestClient(create_app(settings, database_url=db_url)) as c:
        assert upload(c, owner_token, b"x" * 100_000, content_type=None).status_code == 201
        resp = upload(c, owner_token, b"x" * 100_001, content_type=None)
        assert resp.status_code == 413, resp.text
        assert "PAO_ASSET_MAX_BYTES" in resp.json()["detail"]
        # Refused from its declared length alone, before a byte is read.
        big = c.post(
            "/assets",
            content=b"",
            headers={
                **auth(owner_token),
                "Content-Type": "multipart/form-data; boundary=x",
                "Content-Length": str(10**9),
            },
        )
        assert big.status_code == 413
    assert stored(db)[0] == 1


def test_over_the_quota_is_refused_midway(db_url: str, owner_token: str, db: Any) -> None:
    from api.app import create_app
    from pao.settings import Settings

    quota = 3 * logic.CHUNK_BYTES
    settings = Settings(pool_max_size=4, asset_quota_bytes=quota)
    with TestClient(create_app(settings, database_url=db_url)) as c:
        first = upload(c, owner_token, b"a" * (2 * logic.CHUNK_BYTES), content_type=None)
        assert first.status_code == 201
        resp = upload(c, owner_token, b"b" * (2 * logic.CHUNK_BYTES), content_type=None)
        assert resp.status_code == 409, resp.text
        assert resp.json()["type"] == "urn:pao:problem:quota-exceeded"
        assert stored(db) == (1, 2)
        c.delete(f"/assets/{first.json()['id']}", headers=auth(owner_token))
        again = upload(c, owner_token, b"b" * (2 * logic.CHUNK_BYTES), content_type=None)
        assert again.status_code == 201


async def _waits_for_a_lock(conn: Any) -> bool:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    row = await cur.fetchone()
    return bool(row["n"])


def test_two_uploads_cannot_both_take_the_last_of_a_quota(
    db_url: str, owner_token: str, db: Any
) -> None:
    """Two real transactions: each fits alone, not both; the second to insert waits for the
    first's lock on the usage row, then sees its bytes and is refused."""
    agent_id = db.execute("SELECT id FROM agents WHERE name = 'owner'").fetchone()[0]

    async def go() -> list[Any]:
        from pao.store import agents as agents_store

        a, b = await connect(db_url), await connect(db_url)
        try:
            agent = await agents_store.get_agent(a, agent_id)
            assert agent is not None
            limits = logic.Limits(max_bytes=10**9, quota_bytes=1000)
            fields = logic.AssetFields(label="x")
            first = await logic.create_asset(a, agent, limits, [b"1" * 600], fields)
            second = asyncio.create_task(
                logic.create_asset(b, agent, limits, [b"2" * 600], logic.AssetFields())
            )
            # It waits for the first's lock on the usage row (seen in pg_stat_activity).
            await until_async(lambda: _waits_for_a_lock(a), "the second upload to wait for a lock")
            assert not second.done()
            await a.commit()
            results: list[Any] = [first]
            try:
                results.append(await second)
            except Exception as exc:
                results.append(exc)
                await b.rollback()
            return results
        finally:
            await a.close()
            await b.close()

    first, second = asyncio.run(go())
    assert first.size == 600
    assert isinstance(second, QuotaExceeded)
    assert stored(db) == (1, 1)


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", b"{}", 415),
        ("text/plain", b"x", 415),
        ("multipart/form-data", b"--x\r\n", 422),
        ("multipart/form-data; boundary=", b"", 422),
        ("multipart/form-data; boundary=" + "b" * 71, b"", 422),
        ("multipart/form-data; boundary=x", b"garbage without boundary", 422),
        ("multipart/form-data; boundary=x", b"", 422),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="label"\r\n\r\nonly\r\n--x--\r\n',
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="what"\r\n\r\nv\r\n--x--\r\n',
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--x--\r\n',
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="run_id"\r\n\r\nnope\r\n--x--\r\n',
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="label"\r\n\r\n'
            + b"a" * 10_000
            + b"\r\n--x--\r\n",
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="label"\r\n\r\n\xff\xfe\r\n--x--\r\n',
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\nv\r\n--x--\r\n",
            422,
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20)) + b"\r\nv\r\n--x--\r\n",
            422,
        ),
    ],
)
def test_malformed_forms_are_refused(
    client: TestClient,
    owner_token: str,
    db: psycopg.Connection[Any],
    content_type: str,
    body: bytes,
    status: int,
) -> None:
    resp = client.post(
        "/assets", content=body, headers={**auth(owner_token), "Content-Type": content_type}
    )
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert stored(db) == (0, 0)


def test_thousands_of_parts_are_refused(
    client: TestClient, owner_token: str, db: psycopg.Connection[Any]
) -> None:
    part = b'--x\r\nContent-Disposition: form-data; name="tags"\r\n\r\nt\r\n'
    body = part * 5000 + b"--x--\r\n"
    resp = client.post(
        "/assets",
        content=body,
        headers={**auth(owner_token), "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert resp.status_code == 422
    assert "parts" in resp.json()["errors"][0]["message"]
    assert stored(db) == (0, 0)


def test_fields_may_follow_the_file_and_bad_ones_refuse_it(
    client: TestClient, owner_token: str, db: psycopg.Connection[Any]
) -> None:
    def form(*parts: tuple[str, str | None, bytes]) -> bytes:
        out = b""
        for name, filename, value in parts:
            disposition = f'form-data; name="{name}"'
            if filename is not None:
                disposition += f'; filename="{filename}"'
            out += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
            out += value + b"\r\n"
        return out + b"--b--\r\n"

    headers = {**auth(owner_token), "Content-Type": "multipart/form-data; boundary=b"}
    good = form(("file", "f.txt", b"hello"), ("label", None, b"later"), ("tags", None, b"x,y"))
    resp = client.post("/assets", content=good, headers=headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["label"] == "later"
    assert resp.json()["tags"] == ["x", "y"]
    for bad in (
        form(("file", "f.txt", b"hello"), ("label", None, b"bad\x01label")),
        form(("file", "f.txt", b"hello"), ("tags", None, b"a" * 65)),
        form(("file", "f.txt", b"hello"), ("tags", None, b",".join(b"t%d" % i for i in range(40)))),
        form(("file", "f.txt", b"hello"), ("file", "g.txt", b"again")),
        form(("file", "f.txt", b"hello"), ("run_id", None, str(uuid.uuid4()).encode())),
    ):
        resp = client.post("/assets", content=bad, headers=headers)
        assert resp.status_code == 422, resp.text
    assert stored(db) == (1, 1)


def test_run_id_must_be_a_run_the_caller_may_see(
    client: TestClient,
    owner_token: str,
    other_token: str,
    writer_token: str,
    db: psycopg.Connection[Any],
) -> None:
    from tests.helpers import SEED_TASK

    task = client.post("/tasks", json=SEED_TASK, headers=auth(owner_token)).json()
    run = client.post(f"/tasks/{task['id']}/run_now", headers=auth(owner_token)).json()
    mine = upload(client, owner_token, extra={"run_id": run["id"]})
    assert mine.status_code == 201, mine.text
    assert mine.json()["run_id"] == run["id"]
    listed = client.get("/assets", params={"run_id": run["id"]}, headers=auth(owner_token))
    assert [a["id"] for a in listed.json()["items"]] == [mine.json()["id"]]
    by_task = client.get("/assets", params={"task_id": task["id"]}, headers=auth(owner_token))
    assert [a["id"] for a in by_task.json()["items"]] == [mine.json()["id"]]
    theirs = upload(client, other_token, extra={"run_id": run["id"]})
    assert theirs.status_code == 422
    assert theirs.json()["errors"][0]["field"] == "run_id"
    assert stored(db)[0] == 1


def test_the_usage_counter_follows_cascades(
    client: TestClient, owner_token: str, db: psycopg.Connection[Any]
) -> None:
    upload(client, owner_token, b"x" * 1000, content_type=None)
    upload(client, owner_token, b"y" * 500, content_type=None)
    assert db.execute("SELECT bytes FROM asset_usage").fetchone() == (1500,)
    db.execute("DELETE FROM assets")
    assert db.execute("SELECT bytes FROM asset_usage").fetchone() == (0,)
