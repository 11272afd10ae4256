"""pao side by side with pgqueuer and procrastinate: the same workloads on one PostgreSQL.

    make bench-peers                                  # 3 rounds, 20,000 jobs, 200 pickups
    make bench-peers ARGS="--rounds 5"
    make bench-peers ARGS="--quick"                   # small N, one round: a smoke run

Runs under pao's .venv; each peer runs as subprocesses under .bench-venv's
Python (`make bench-peers` builds it from bench/peers/requirements.txt). One
PostgreSQL serves every system (an embedded one, or BENCH_DATABASE_URL's
server); each system gets a fresh database each round, and the systems take
turns round by round, so drift on a shared machine hits all of them alike.

Workloads, per system and round:
  enqueue 1-by-1 / batch   N jobs, one call each / 1,000 per call (jobs/s)
  drain 1w / 2w            N queued no-op jobs drained by idle worker processes, from the
                           enqueue's commit to the last job done (jobs/s)
  pickup p50/p95/p99       one job at a time with an idle worker: from just before the enqueue
                           to the first line of the job's code (ms)
  worker peak RSS          VmHWM of the 1-worker drain process after N jobs (MB)

For pao a job is a run of a task with one no-op step (`sleep 0`), recorded in
`runs` as in production. pao's enqueue is the statement the API's run_now uses
(`store.queue.queue`: the occurrence, its first run and its decision
record, waking idle workers at commit), one job per call, or the scheduler's
(`queue_many`) with 1,000 per call, each call a transaction by itself like the
peers'; the HTTP hop is not in these figures (bench/throughput.py and
bench/api_throughput.py measure it). pao's job start is the step's own
`started_at`. Like each peer's, pao's side runs in a process of its own
(bench/peers/pao_side.py), started afresh for every call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from bench.common import agent_id, percentiles
from bench.lateness import NOOP
from pao.migrate import migrate

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BENCH_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
BATCH = 1000
HARNESS = "bench-harness"
WORKER_APP = "bench-worker"
# Pipelines per pao worker: no-op jobs, so more in flight means fewer round trips per job. A
# worker claims 128 at a time (worker.claims.CLAIM_BATCH): with 256 slots one claim's runs
# run while the next is claimed. PAO_BENCH_CONCURRENCY overrides it.
PAO_WORKER_CONCURRENCY = os.environ.get("PAO_BENCH_CONCURRENCY", "256")

# name, unit, True when higher is better
WORKLOADS: list[tuple[str, str, bool]] = [
    ("enqueue 1-by-1", "jobs/s", True),
    ("enqueue batch", "jobs/s", True),
    ("drain 1 worker", "jobs/s", True),
    ("drain 2 workers", "jobs/s", True),
    ("pickup p50", "ms", False),
    ("pickup p95", "ms", False),
    ("pickup p99", "ms", False),
    ("worker peak RSS", "MB", False),
]


@dataclass(frozen=True)
class Peer:
    name: str
    script: str
    done_sql: str  # how many of the filled jobs are finished; %(n)s is how many were filled
    reset_sql: str
    env: dict[str, str]  # its fast settings, read by its script
    how: str


# Each peer's fast settings; the environment may override them to try others.
# pgqueuer's dequeue batch: 100 and 500 drained within the noise of 250 (50,000 jobs, four
# interleaved rounds), whose medians were the highest with 1 and with 2 workers.
PGQUEUER_BATCH = os.environ.get("PGQUEUER_BATCH", "250")
PROCRASTINATE_CONCURRENCY = os.environ.get("PROCRASTINATE_CONCURRENCY", "10")
PEERS = [
    Peer(
        "pgqueuer",
        "pgqueuer_side.py",
        # A finished job leaves the queue table (its record goes to pgqueuer_log).
        "SELECT %(n)s - count(*) FROM pgqueuer",
        "TRUNCATE pgqueuer, pgqueuer_log, bench_started",
        {"PGQUEUER_BATCH": PGQUEUER_BATCH},
        f"asyncpg driver, uvloop, async entrypoints, dequeue batch {PGQUEUER_BATCH} "
        "(its default: 10); "
        "enqueue = Queries.enqueue, batch = its list form",
    ),
    Peer(
        "procrastinate",
        "procrastinate_side.py",
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
        "TRUNCATE procrastinate_jobs, bench_started CASCADE",
        {"PROCRASTINATE_CONCURRENCY": PROCRASTINATE_CONCURRENCY},
        f"psycopg connector, async tasks, worker concurrency {PROCRASTINATE_CONCURRENCY} "
        "(its default: 1), "
        "LISTEN/NOTIFY, finished jobs kept; enqueue = defer_async, batch = batch_defer_async",
    ),
]
PAO_HOW = (
    "job = a run of a task with one no-op step, recorded in runs (with its occurrence and "
    "decision record); enqueue = store.queue.queue (run_now's statement without HTTP, "
    "one autocommit statement per job, waking workers at commit), batch = its list form "
    "store.queue.queue_many; workers with PAO_WORKER_CONCURRENCY=" + PAO_WORKER_CONCURRENCY
)
# What is left, as for pgqueuer: queued and running work, each counted on its partial index
# (a run's work and its run end in one statement). Counting the succeeded runs read the whole
# runs table at every poll, which cost the database about 8 µs per job of a 2-core drain.
PAO_DONE = (
    "SELECT %(n)s - (SELECT count(*) FROM due_work WHERE state = 'queued')"
    " - (SELECT count(*) FROM due_work WHERE state = 'running')"
)
PAO_RESET = "TRUNCATE due_work, runs, run_logs, occurrences CASCADE"


def with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def harness_conn(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, application_name=HARNESS)


@contextmanager
def server() -> Iterator[str]:
    """One PostgreSQL for the whole run: BENCH_DATABASE_URL's, else a throwaway embedded one."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        yield url
        return
    data = Path(tempfile.mkdtemp(prefix="pao-peers-", dir="/tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs without XDG_RUNTIME_DIR
        from pgserver.postgres_server import get_server

        embedded = get_server(data / "pgdata", cleanup_mode="delete")
    try:
        with harness_conn(embedded.get_uri()) as conn:
            # Every system's queue table is filled and drained within seconds of its
            # database being created: with the default one-minute naptime, no system would
            # ever be planned with statistics, unlike anything that runs for a minute.
            conn.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
            conn.execute("SELECT pg_reload_conf()")
        yield embedded.get_uri()
    finally:
        embedded.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    with harness_conn(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(admin_url, name)
    finally:
        with harness_conn(admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_settings(url: str) -> dict[str, str]:
    names = [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_connections",
        "jit",
        "autovacuum_naptime",
    ]
    with harness_conn(url) as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


def call_side(argv: list[str], *, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one command of a system's side script in a fresh process; its last JSON line."""
    out = subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.PIPE).stdout
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def worker_env(i: int) -> dict[str, str]:
    """Names worker i's connections (libpq's PGAPPNAME; the asyncpg peer passes it on)."""
    return {"PGAPPNAME": f"{WORKER_APP}-{i}"}


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], settle: float) -> None:
    """Until every worker process has a connection open, then `settle` more seconds."""
    deadline = time.monotonic() + 60
    with harness_conn(url) as conn:
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"a worker exited with {p.returncode} before it was ready")
            row = conn.execute(
                "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE %s",
                (f"{WORKER_APP}-%",),
            ).fetchone()
            if row and row[0] >= len(procs):
                time.sleep(settle)
                return
            time.sleep(0.05)
    raise SystemExit(f"not every one of {len(procs)} workers connected within 60 s")


def wait_done(url: str, sql: str, count: int, timeout: float) -> float:
    """Polls until `count` jobs are done; returns time.time() when it saw them."""
    deadline = time.monotonic() + timeout
    with harness_conn(url) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql, {"n": count}).fetchone()  # type: ignore[arg-type]
            if row and row[0] >= count:
                return time.time()
            time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout}s waiting for {count} jobs ({sql})")


# ---------------------------------------------------------------------------- pao


class Pao:
    name = "pao"

    def __init__(self, url: str) -> None:
        self.url = url
        asyncio.run(migrate(url))
        owner = agent_id(url)
        with harness_conn(url) as conn:
            row = conn.execute(
                "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone, "
                "payload) VALUES (%s, 'noop', 'event', 'bench.noop', 'UTC', %s::jsonb) "
                "RETURNING id",
                (owner, NOOP),
            ).fetchone()
        assert row is not None
        self.task_id: uuid.UUID = row[0]

    def _call(self, *args: object) -> dict[str, Any]:
        return call_side(
            [sys.executable, "-m", "bench.peers.pao_side", str(args[0]), self.url]
            + [str(self.task_id)]
            + [str(a) for a in args[1:]],
            cwd=ROOT,
            env=dict(os.environ),
        )

    def enqueue(self, count: int, batch: int) -> float:
        return float(self._call("enqueue", count, batch)["seconds"])

    def fill(self, count: int) -> float:
        return float(self._call("fill", count)["committed_at"])

    def workers(self, count: int) -> list[subprocess.Popen[bytes]]:
        env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "PAO_LOG_LEVEL": "warning",
            "PAO_METRICS_PORT": "0",  # two workers on one machine would share the port
            "PAO_WORKER_CONCURRENCY": PAO_WORKER_CONCURRENCY,
        }
        return [
            subprocess.Popen(
                [sys.executable, "-m", "pao", "worker"],
                env={**env, **worker_env(i)},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            for i in range(count)
        ]

    def pickup(self, count: int) -> list[float]:
        return [float(v) for v in self._call("pickup", count)["latencies_ms"]]

    done_sql = PAO_DONE
    reset_sql = PAO_RESET


# --------------------------------------------------------------------------- peers


class PeerRunner:
    def __init__(self, peer: Peer, url: str) -> None:
        self.peer = peer
        self.name = peer.name
        self.url = url
        self.done_sql = peer.done_sql
        self.reset_sql = peer.reset_sql
        self._call("setup")

    def _call(self, *args: object) -> dict[str, Any]:
        return call_side(
            [str(BENCH_PYTHON), str(HERE / self.peer.script), str(args[0]), self.url]
            + [str(a) for a in args[1:]],
            cwd=HERE,
            env={**os.environ, **self.peer.env},
        )

    def enqueue(self, count: int, batch: int) -> float:
        return float(self._call("enqueue", count, batch)["seconds"])

    def fill(self, count: int) -> float:
        return float(self._call("fill", count)["committed_at"])

    def workers(self, count: int) -> list[subprocess.Popen[bytes]]:
        return [
            subprocess.Popen(
                [str(BENCH_PYTHON), str(HERE / self.peer.script), "worker", self.url],
                cwd=HERE,
                env={**os.environ, **self.peer.env, **worker_env(i)},
                stdout=subprocess.DEVNULL,
            )
            for i in range(count)
        ]

    def pickup(self, count: int) -> list[float]:
        return [float(v) for v in self._call("pickup", count)["latencies_ms"]]


# ---------------------------------------------------------------------------- round


def one_round(system: Pao | PeerRunner, jobs: int, pickups: int, settle: float) -> dict[str, float]:
    figures: dict[str, float] = {}

    def reset() -> None:
        with harness_conn(system.url) as conn:
            conn.execute(system.reset_sql)  # type: ignore[arg-type]

    figures["enqueue 1-by-1"] = jobs / system.enqueue(jobs, 1)
    reset()
    figures["enqueue batch"] = jobs / system.enqueue(jobs, BATCH)
    reset()
    for count, label in ((1, "drain 1 worker"), (2, "drain 2 workers")):
        procs = system.workers(count)
        try:
            wait_ready(system.url, procs, settle)
            committed = system.fill(jobs)
            finished = wait_done(system.url, system.done_sql, jobs, timeout=600)
            figures[label] = jobs / (finished - committed)
            if count == 1:
                figures["worker peak RSS"] = peak_rss_mb(procs[0].pid)
        finally:
            stop(procs)
        reset()
    procs = system.workers(1)
    try:
        wait_ready(system.url, procs, settle)
        late = percentiles(system.pickup(pickups))
    finally:
        stop(procs)
    figures.update(
        {"pickup p50": late["p50"], "pickup p95": late["p95"], "pickup p99": late["p99"]}
    )
    return figures


def report(results: dict[str, dict[str, list[float]]], systems: list[str]) -> list[str]:
    lines = []
    head = f"{'workload':<18} {'unit':<7}" + "".join(f"{s:>15}" for s in systems)
    head += f"{'pao / best peer':>17}  better"
    lines.append(head)
    lines.append("-" * len(head))
    for name, unit, higher in WORKLOADS:
        medians = {s: statistics.median(results[s][name]) for s in systems if results[s].get(name)}
        row = f"{name:<18} {unit:<7}" + "".join(
            f"{medians[s]:>15,.1f}" if s in medians else f"{'-':>15}" for s in systems
        )
        peers = [v for s, v in medians.items() if s != "pao"]
        if "pao" in medians and peers:
            best = max(peers) if higher else min(peers)
            row += f"{medians['pao'] / best:>16.2f}x"
        row += "  higher" if higher else "  lower"
        lines.append(row)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick: 1)")
    parser.add_argument("--jobs", type=int, default=None, help="N (default 20,000; quick: 500)")
    parser.add_argument("--pickups", type=int, default=None, help="default 200; quick: 20")
    parser.add_argument("--quick", action="store_true", help="small N, one round: a smoke run")
    parser.add_argument(
        "--only", default="pao,pgqueuer,procrastinate", help="comma-separated systems"
    )
    parser.add_argument("--json", default=str(ROOT / ".bench-peers.json"), help="results file")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: workers stopped, databases dropped, the server shut down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rounds = args.rounds or (1 if args.quick else 3)
    jobs = args.jobs or (500 if args.quick else 20_000)
    pickups = args.pickups or (20 if args.quick else 200)
    settle = 0.5 if args.quick else 1.5
    systems = [s for s in args.only.split(",") if s]
    peers = {p.name: p for p in PEERS}
    unknown = set(systems) - set(peers) - {"pao"}
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}: choose from pao, {', '.join(peers)}")
    if any(s != "pao" for s in systems) and not BENCH_PYTHON.exists():
        raise SystemExit("no .bench-venv: run `make bench-peers`, which builds it first")

    how = {s: PAO_HOW if s == "pao" else peers[s].how for s in systems}
    how["batch"] = f"{BATCH:,} jobs per enqueue call"
    started = datetime.now(UTC)
    results: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    with server() as admin:
        fixed = server_settings(admin)
        print(
            f"pao vs peers, {started:%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{os.cpu_count()} cores, {rounds} rounds, N={jobs}, pickups={pickups}",
            flush=True,
        )
        print("PostgreSQL: " + ", ".join(f"{k}={v}" for k, v in fixed.items()), flush=True)
        for name, text in how.items():
            print(f"{name}: {text}", flush=True)
        for r in range(1, rounds + 1):
            for name in systems:
                t0 = time.monotonic()
                with fresh_database(admin, f"bench_{name}_{r}") as url:
                    runner: Pao | PeerRunner = (
                        Pao(url) if name == "pao" else PeerRunner(peers[name], url)
                    )
                    figures = one_round(runner, jobs, pickups, settle)
                for k, v in figures.items():
                    results[name].setdefault(k, []).append(v)
                shown = "  ".join(f"{k}={v:,.1f}" for k, v in figures.items())
                print(f"round {r} {name:<13} ({time.monotonic() - t0:.0f}s) {shown}", flush=True)
    print()
    table = report(results, systems)
    for line in table:
        print(line)
    Path(args.json).write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "machine": {"node": platform.node(), "cores": os.cpu_count()},
                "postgresql": fixed,
                "rounds": rounds,
                "jobs": jobs,
                "pickups": pickups,
                "how": how,
                "batch": BATCH,
                "results": results,
                "table": table,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
