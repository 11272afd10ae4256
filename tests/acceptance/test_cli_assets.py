"""`pao assets` against a real `pao api`: upload, list, get, download (resumed, to stdout),
link, rm, the progress bar on a terminal, and flat memory.

The progress bar and memory tests run `pao` as subprocesses (a terminal, a peak RSS), as do
an upload, a download to stdout and `pao usage` in the first test; its other commands run
`pao`'s main in this process (`pao_inline`), the same code without a Python start-up each."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.procs import ROOT, pao_inline
from tests.acceptance.running import api_process
from tests.helpers import auth

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4096  # ~1 MiB
MIB = 1 << 20

Cli = Callable[..., subprocess.CompletedProcess[bytes]]
# The memory test moves 64 MiB each way through subprocesses (a busy machine is slow at it).
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[str]:
    with api_process(db_url, tmp_path) as base:
        yield base


def _env(base: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PAO_TOKEN", "DATABASE_URL")}
    return {**env, "PAO_API_URL": base, "PAO_TOKEN": token, "PYTHONPATH": str(ROOT)}


def _cli(base: str, token: str, cwd: Path, *, process: bool = False) -> Cli:
    """`pao ...` run in `cwd` (where downloads land), stdin closed, output as bytes: in this
    process, or as a subprocess."""
    env = _env(base, token)

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        if not process:
            return pao_inline(*args, env=env, cwd=cwd)
        return subprocess.run(
            [sys.executable, "-m", "pao", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )

    return run


def _ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, (done.args, done.stdout[:2000], done.stderr)
    return done.stdout.decode()


def _json(done: subprocess.CompletedProcess[bytes]) -> Any:
    return json.loads(_ok(done))


def _failed(done: subprocess.CompletedProcess[bytes], status: int) -> str:
    assert done.returncode == status, (done.args, done.stdout[:2000], done.stderr)
    return done.stderr.decode()


def test_upload_list_download_link_and_remove(
    api: str, make_token: Callable[..., str], tmp_path: Path
) -> None:
    token = make_token(
        "assets:read", "assets:write", "runs:read", "tasks:write", "tasks:read", name="filer"
    )
    other = make_token("assets:read", "assets:write", name="other")
    work = tmp_path / "work"
    work.mkdir()
    cli = _cli(api, token, work)
    subprocess_cli = _cli(api, token, work, process=True)
    source = work / "cat.png"
    source.write_bytes(PNG)

    # Upload: not on a terminal, so nothing but the result is printed.
    done = subprocess_cli(
        "assets", "upload", str(source), "--label", "a cat", "--tag", "pets", "--tag", "x"
    )
    text = _ok(done)
    assert done.stderr == b""
    assert text.startswith("uploaded asset ")
    asset_id = text.split()[2]
    listed = _json(cli("assets", "list", "--media-type", "image/*", "--json"))
    [asset] = listed["items"]
    assert asset["id"] == asset_id
    assert (asset["media_type"], asset["size"], asset["label"]) == ("image/png", len(PNG), "a cat")
    assert asset["tags"] == ["pets", "x"]
    assert asset["sha256"] == hashlib.sha256(PNG).hexdigest()
    table = _ok(cli("assets", "list", "--tag", "pets"))
    header, row = table.splitlines()
    assert header.split() == ["ID", "TYPE", "SIZE", "CREATED", "(UTC)", "FILENAME", "LABEL", "TAGS"]
    assert row.split()[:4] == [asset_id, "image/png", "1.0", "MiB"]
    shown = _ok(cli("assets", "get", asset_id))
    assert f"size        1.0 MiB ({len(PNG)} bytes)" in shown

    # Attached to a run it may see: listed by the run.
    task = {
        "title": "with files",
        "schedule_kind": "event",
        "schedule_expr": "never.sent",
        "payload": {"pipeline": [{"id": "x", "uses": "log", "with": {"message": "x"}}]},
    }
    made = httpx.post(f"{api}/tasks", json=task, headers=auth(token)).json()
    run = httpx.post(f"{api}/tasks/{made['id']}/run_now", headers=auth(token)).json()
    notes = work / "notes.txt"
    notes.write_text("hello\n")
    attached = _json(cli("assets", "upload", str(notes), "--run-id", run["id"], "--json"))
    assert attached["run_id"] == run["id"]
    by_run = _json(cli("assets", "list", "--run-id", run["id"], "--json"))
    assert [a["id"] for a in by_run["items"]] == [attached["id"]]

    # Download to the asset's own name here; the file is there, no .part left behind.
    source.rename(work / "original.png")
    text = _ok(cli("assets", "download", asset_id))
    assert text.strip() == (f"downloaded asset {asset_id} to cat.png (1.0 MiB, SHA-256 checked)")
    assert (work / "cat.png").read_bytes() == PNG
    assert sorted(p.name for p in work.iterdir()) == ["cat.png", "notes.txt", "original.png"]
    # It never replaces a file unless told where to write.
    refused = _failed(cli("assets", "download", asset_id), 2)
    assert "cat.png exists; pass -o PATH" in refused
    into = work / "sub"
    into.mkdir()
    got = _json(cli("assets", "download", asset_id, "-o", str(into), "--json"))
    assert got["path"] == str(into / "cat.png")
    assert (into / "cat.png").read_bytes() == PNG

    # Resumed: what a .part file holds is kept and only the rest asked for. A .part of
    # the right length but wrong bytes proves it, as the whole then fails its SHA-256.
    target = work / "again.png"
    part = work / "again.png.part"
    part.write_bytes(b"\0" * 1000)
    failed = _failed(cli("assets", "download", asset_id, "-o", str(target)), 1)
    assert "resuming" in failed
    assert "at 1000 bytes" in failed
    assert "Corrupted download (502)" in failed
    assert not part.exists()
    assert not target.exists()
    part.write_bytes(PNG[: len(PNG) // 3])
    _ok(cli("assets", "download", asset_id, "-o", str(target)))
    assert target.read_bytes() == PNG
    assert not part.exists()

    # To stdout, byte for byte, with nothing else there.
    piped = subprocess_cli("assets", "download", asset_id, "-o", "-")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == PNG
    assert _failed(cli("assets", "download", asset_id, "-o", "-", "--json"), 2)

    # A signed link works without a token; one longer than an hour is refused here.
    link = cli("assets", "link", asset_id, "--expires-in", "5m")
    url = _ok(link).strip()
    assert b"anyone with this link can read the asset" in link.stderr
    assert httpx.get(url).content == PNG
    assert "--expires-in must be" in _failed(
        cli("assets", "link", asset_id, "--expires-in", "2h"), 2
    )

    # Another agent's asset does not exist for it, and nothing is written.
    stranger = _cli(api, other, work)
    assert "Not found (404)" in _failed(stranger("assets", "get", asset_id), 1)
    before = sorted(p.name for p in work.iterdir())
    assert "Not found (404)" in _failed(stranger("assets", "download", asset_id), 1)
    assert sorted(p.name for p in work.iterdir()) == before

    # Bad input exits 2 before anything is sent.
    assert "cannot read" in _failed(cli("assets", "upload", str(work / "missing.bin")), 2)
    assert "is not an id" in _failed(cli("assets", "get", "nope"), 2)

    # Usage counts what is kept; rm frees it.
    usage = _ok(subprocess_cli("usage"))
    kept = len(PNG) + len("hello\n")
    assert f"assets kept: {kept / MIB:.1f} MiB of 10.0 GiB ({kept} of" in usage
    assert _ok(cli("assets", "rm", asset_id)).strip() == f"deleted asset {asset_id}"
    assert "Not found (404)" in _failed(cli("assets", "get", asset_id), 1)
    assert _json(cli("usage", "--json"))["asset_bytes"] == len("hello\n")


def _on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; its exit status and what the terminal showed."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower
    ) as proc:
        os.close(follower)
        shown = bytearray()
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError as exc:  # EIO: the process closed its end
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            shown.extend(data)
        os.close(leader)
        return proc.wait(timeout=60), shown.decode(errors="replace")


def test_a_progress_bar_on_a_terminal_only(
    api: str, make_token: Callable[..., str], tmp_path: Path
) -> None:
    token = make_token("assets:read", "assets:write", name="filer")
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    env = {**_env(api, token), "TERM": "xterm", "COLUMNS": "120"}
    base = [sys.executable, "-m", "pao", "assets"]
    status, shown = _on_a_terminal([*base, "upload", str(source)], env, tmp_path)
    assert status == 0, shown
    assert "uploading big.bin" in shown
    assert "3.0/3.0 MiB" in shown
    [asset] = httpx.get(f"{api}/assets", headers=auth(token)).json()["items"]
    status, shown = _on_a_terminal(
        [*base, "download", asset["id"], "-o", str(tmp_path / "back.bin")], env, tmp_path
    )
    assert status == 0, shown
    assert "downloading back.bin" in shown
    assert "3.0/3.0 MiB" in shown
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


PEAK = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)\n"
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _peak_kib(args: list[str], env: dict[str, str], cwd: Path) -> int:
    """The peak resident memory (KiB) of `pao ARGS`, measured by a parent of its own."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", "pao", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    assert out[0] == "0", out
    return int(out[1])


@pytest.mark.slow
def test_uploads_and_downloads_stream_in_flat_memory(
    api: str, make_token: Callable[..., str], tmp_path: Path
) -> None:
    """A 64 MiB file goes up and comes back with the command's peak memory within 24 MiB
    of what it takes for a 1 KiB file: the file is never held whole."""
    token = make_token("assets:read", "assets:write", name="filer")
    env = _env(api, token)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(bytes(range(256)) * 4)
    with big.open("wb") as out:
        for i in range(64):
            out.write(bytes([i]) * 256 + bytes(range(256)) * 4095)
    peaks = {}
    for f in (small, big):
        peaks[f"up {f.name}"] = _peak_kib(
            ["assets", "upload", str(f), "--label", f.name], env, tmp_path
        )
    ids = {
        a["label"]: a["id"] for a in httpx.get(f"{api}/assets", headers=auth(token)).json()["items"]
    }
    for name in ("small.bin", "big.bin"):
        peaks[f"down {name}"] = _peak_kib(
            ["assets", "download", ids[name], "-o", str(tmp_path / f"back-{name}")], env, tmp_path
        )
    assert hashlib.sha256((tmp_path / "back-big.bin").read_bytes()).digest() == (
        hashlib.sha256(big.read_bytes()).digest()
    )
    assert peaks["up big.bin"] - peaks["up small.bin"] < 24 * 1024, peaks
    assert peaks["down big.bin"] - peaks["down small.bin"] < 24 * 1024, peaks
