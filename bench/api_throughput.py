"""API requests per second: pao's GET /tasks/{id} and POST /tasks against bare FastAPI.

    .venv/bin/python -m bench.api_throughput [--seconds 8] [--connections 8] [--rounds 3]

A real `pao api` process on a throwaway database, and bench/bare_app.py (the
same uvicorn settings, endpoints that do no work) side by side; rounds
alternate between them so drift hits both. The load comes from a small
keep-alive HTTP/1.1 client on raw asyncio streams (cheaper per request than
any HTTP library, so it takes less of the machine from the servers): each
connection sends its next request when the last answer arrived. Medians of
the rounds; the target is GET at >= 40% of bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from bench.common import ROOT, database, processes
from pao.tokens import new_token

BODY = json.dumps(
    {
        "title": "api bench",
        "schedule_kind": "event",
        "schedule_expr": "bench.api",
        "payload": {"pipeline": [{"id": "noop", "uses": "sleep", "with": {"seconds": 0}}]},
    }
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within 20 s")


@contextmanager
def bare_server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_app", str(port)], cwd=ROOT)
    try:
        wait_up(f"http://127.0.0.1:{port}/tasks/{'0' * 8}-0000-0000-0000-{'0' * 12}")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def request(method: str, path: str, token: str | None, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def one_connection(port: int, raw: bytes, want: int, until: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.monotonic() < until:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != want:
                raise SystemExit(f"got HTTP {status}, wanted {want}: {head!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            done += 1
    finally:
        writer.close()
    return done


def load(port: int, raw: bytes, want: int, seconds: float, connections: int) -> float:
    """Requests per second over `seconds`, `connections` at a time."""

    async def go() -> float:
        start = time.monotonic()
        until = start + seconds
        counts = await asyncio.gather(
            *(one_connection(port, raw, want, until) for _ in range(connections))
        )
        return sum(counts) / (time.monotonic() - start)

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"pao API throughput, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"{args.connections} keep-alive connections, {args.seconds:.0f}s per figure, "
        f"{args.rounds} rounds",
        flush=True,
    )
    figures: dict[str, list[float]] = {}
    with database() as url:
        port = free_port()
        token = new_token()
        # Limits stay on (their counting is part of every request) but far above this load.
        env = {
            "PAO_PORT": str(port),
            "PAO_ADMIN_TOKEN": token,
            "PAO_RATE_LIMIT_PER_MINUTE": "10000000",
            "PAO_MAX_ACTIVE_TASKS": "10000000",
            "PAO_MAX_OCCURRENCES_PER_HOUR": "1000000000",
        }
        with processes(url, ("api", env)), bare_server() as bare_port:
            wait_up(f"http://127.0.0.1:{port}/health/ready")
            created = httpx.post(
                f"http://127.0.0.1:{port}/tasks",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                content=BODY,
            )
            created.raise_for_status()
            task = created.json()["id"]
            cases = [
                ("bare GET /tasks/{id}", bare_port, request("GET", f"/tasks/{task}", None), 200),
                ("pao GET /tasks/{id}", port, request("GET", f"/tasks/{task}", token), 200),
                ("bare POST /tasks", bare_port, request("POST", "/tasks", None, BODY), 201),
                ("pao POST /tasks", port, request("POST", "/tasks", token, BODY), 201),
            ]
            for r in range(args.rounds):
                for name, p, raw, want in cases:
                    rate = load(p, raw, want, args.seconds, args.connections)
                    figures.setdefault(name, []).append(rate)
                    print(f"round {r + 1} {name:<24} {rate:8.0f} req/s", flush=True)
    med = {k: statistics.median(v) for k, v in figures.items()}
    print()
    for name, value in med.items():
        print(f"{name:<44} {value:.0f} req/s (median)")
    for verb in ("GET /tasks/{id}", "POST /tasks"):
        ratio = med[f"pao {verb}"] / med[f"bare {verb}"]
        print(f"{f'pao {verb} / bare':<44} {ratio:.0%}")


if __name__ == "__main__":
    main()
