"""Asset upload and download throughput through `pao api`, against a bare ceiling.

    .venv/bin/python -m bench.assets [--sizes 1,50,500] [--rounds 2] [--quick]

A real `pao api` on a throwaway database, and bench/bare_files.py (the same uvicorn
settings: uploads read to nowhere, downloads streamed from a file on disk) side by
side; rounds alternate between them. One client (httpx, streaming 1 MiB pieces from a
generator, hashing nothing) does one transfer at a time. Prints MB/s per size and
direction (medians of the rounds), pao's share of the ceiling, and the API's peak RSS
(VmHWM). Targets: download >= 50 % of the ceiling, upload >= 30 %.
`--quick` runs 1 and 5 MB once, to check that the bench works.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.common import ROOT, database, processes
from pao.tokens import new_token

MB = 1 << 20
PIECE = MB
BOUNDARY = "bench-boundary"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    for _ in range(300):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within 30 s")


@contextmanager
def bare_server(files: Path) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "BENCH_FILES": str(files)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_files", str(port)], cwd=ROOT, env=env
    )
    try:
        wait_up(f"http://127.0.0.1:{port}/docs")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def content(size: int) -> Iterator[bytes]:
    """`size` bytes in 1 MiB pieces, each different (nothing downstream can dedupe them)."""
    block = os.urandom(PIECE)
    sent = 0
    n = 0
    while sent < size:
        piece = (n.to_bytes(8, "big") + block[8:])[: size - sent]
        yield piece
        sent += len(piece)
        n += 1


def form(size: int) -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="b.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from content(size)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def timed_upload(
    http: httpx.Client, url: str, body: Iterator[bytes], headers: dict[str, str]
) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    resp = http.post(url, content=body, headers=headers)
    took = time.perf_counter() - start
    if resp.status_code != 201:
        raise SystemExit(f"upload to {url} answered {resp.status_code}: {resp.text[:300]}")
    return took, resp.json()


def timed_download(http: httpx.Client, url: str, headers: dict[str, str], size: int) -> float:
    start = time.perf_counter()
    got = 0
    with http.stream("GET", url, headers=headers) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_raw(PIECE):
            got += len(chunk)
    took = time.perf_counter() - start
    if got != size:
        raise SystemExit(f"{url} sent {got} bytes, not {size}")
    return took


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,50,500", help="sizes in MB, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 and 5 MB, one round")
    args = parser.parse_args()
    sizes = [1, 5] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    print(
        f"pao assets throughput, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"sizes {sizes} MB, {rounds} rounds",
        flush=True,
    )
    figures: dict[tuple[str, str, int], list[float]] = {}
    # The embedded server as a user gets it: no setting changed for the bench (fsync and
    # full_page_writes on, autovacuum at its default pace).
    with (
        database(analyse_soon=False) as url,
        tempfile.TemporaryDirectory(prefix="pao-bench-files-") as tmp,
    ):
        files = Path(tmp)
        port = free_port()
        token = new_token()
        env = {
            "PAO_PORT": str(port),
            "PAO_ADMIN_TOKEN": token,
            "PAO_RATE_LIMIT_PER_MINUTE": "10000000",
            "PAO_ASSET_MAX_BYTES": str(max(sizes) * MB),
            "PAO_ASSET_QUOTA_BYTES": str(4 * max(sizes) * MB),
        }
        auth = {"Authorization": f"Bearer {token}"}
        for size in sizes:
            with (files / f"{size}.bin").open("wb") as out:
                for piece in content(size * MB):
                    out.write(piece)
        with processes(url, ("api", env)) as procs, bare_server(files) as bare_port:
            pao_url = f"http://127.0.0.1:{port}"
            bare_url = f"http://127.0.0.1:{bare_port}"
            wait_up(f"{pao_url}/health/ready")
            with httpx.Client(timeout=600) as http:
                for r in range(rounds):
                    for size in sizes:
                        n = size * MB
                        # Small files: several transfers per figure, so it is not all latency.
                        repeat = max(1, 20 // size)
                        for who in ("bare", "pao"):
                            up = down = 0.0
                            for _ in range(repeat):
                                if who == "bare":
                                    took, _ = timed_upload(
                                        http, f"{bare_url}/upload", content(n), {}
                                    )
                                    up += took
                                    down += timed_download(
                                        http, f"{bare_url}/download/{size}.bin", {}, n
                                    )
                                    continue
                                headers = {
                                    **auth,
                                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                                }
                                took, asset = timed_upload(
                                    http, f"{pao_url}/assets", form(n), headers
                                )
                                up += took
                                down += timed_download(
                                    http, f"{pao_url}/assets/{asset['id']}/content", auth, n
                                )
                                http.delete(f"{pao_url}/assets/{asset['id']}", headers=auth)
                            for way, took in (("upload", up), ("download", down)):
                                rate = n * repeat / took / 1e6
                                figures.setdefault((who, way, size), []).append(rate)
                                print(
                                    f"round {r + 1} {who:<4} {way:<8} {size:>4} MB "
                                    f"{rate:8.1f} MB/s",
                                    flush=True,
                                )
            rss = peak_rss(procs[0].pid)
    print()
    print(f"{'size':>6} {'way':<9} {'bare MB/s':>10} {'pao MB/s':>10} {'pao/bare':>9} target")
    for size in sizes:
        for way, target in (("upload", 0.30), ("download", 0.50)):
            bare = statistics.median(figures[("bare", way, size)])
            pao = statistics.median(figures[("pao", way, size)])
            ok = "ok" if pao / bare >= target else "BELOW"
            print(
                f"{size:>4}MB {way:<9} {bare:>10.1f} {pao:>10.1f} {pao / bare:>8.0%} "
                f">={target:.0%} {ok}"
            )
    print(f"pao api peak RSS (VmHWM): {rss / MB:.0f} MiB")


if __name__ == "__main__":
    main()
