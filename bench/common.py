"""Shared set-up for the benchmarks: a throwaway embedded PostgreSQL and real processes."""

from __future__ import annotations

import asyncio
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

import psycopg

from pao.db import connect
from pao.domain.agents import create_agent
from pao.embedded import ensure_embedded
from pao.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def database(*, analyse_soon: bool = True) -> Iterator[str]:
    """A fresh migrated database on a throwaway embedded server (or on BENCH_DATABASE_URL).

    `analyse_soon=False` leaves the server's settings as a user's embedded server has them
    (bench.assets: its figures are a user's)."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if not url:
        data = Path(tempfile.mkdtemp(prefix="pao-bench-", dir="/tmp"))
        url = ensure_embedded(data)
        if analyse_soon:
            with psycopg.connect(url, autocommit=True) as conn:
                # Tables filled seconds before they are drained: analysed within a second, as
                # a long-running database's are (the default waits a minute; until then the
                # claim is planned without statistics and sorts every due row).
                conn.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
                conn.execute("SELECT pg_reload_conf()")
    asyncio.run(migrate(url))
    yield url


def agent_id(url: str) -> str:
    async def go() -> str:
        conn = await connect(url)
        async with conn.transaction():
            new = await create_agent(conn, actor=None, name="bench", scopes=["admin"])
        await conn.close()
        return str(new.agent.id)

    return asyncio.run(go())


@contextmanager
def processes(
    url: str, *specs: tuple[str, dict[str, str]]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start `pao <name>` processes; SIGTERM them at the end."""
    procs = []
    for name, extra in specs:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "PAO_LOG_LEVEL": "warning",
            "PAO_METRICS_PORT": "0",  # several on one machine; metrics are counted all the same
            **extra,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pao", name], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
            )
        )
    try:
        yield procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_until(url: str, sql: str, want: int, timeout: float) -> float:
    """Poll until `sql` returns `want`; returns the seconds it took."""
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - start < timeout:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
            if row and row[0] >= want:
                return time.monotonic() - start
            time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout}s waiting for {sql!r} to reach {want}")


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = (
        statistics.quantiles(ordered, n=100, method="inclusive")
        if len(ordered) > 1
        else ordered * 99
    )
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": ordered[-1], "n": len(ordered)}


def show(title: str, figures: dict[str, float], unit: str = "ms") -> None:
    parts = [f"{k}={v:.1f}{unit}" if k != "n" else f"n={int(v)}" for k, v in figures.items()]
    print(f"{title:<44} " + "  ".join(parts), flush=True)
