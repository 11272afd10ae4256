"""Hosts whose clocks are two minutes off still fire everything on time by the database's.

A real `pao api`, `pao scheduler` and `pao worker` run under Debian's libfaketime with
their host clock two minutes ahead, then two minutes behind, against a database whose
clock is right. Every occurrence must run once, starting within a small bound of its
scheduled time by the DATABASE's clock (`runs.started_at - scheduled_for`, both stamped
by the server), none judged late or missed; a step longer than the lease runs once (the
lease neither cut short nor stretched: one attempt, no rescue).

libfaketime fakes the wall clock only (`FAKETIME_DONT_FAKE_MONOTONIC=1`): that is what
a drifting host looks like (NTP offsets move CLOCK_REALTIME, never CLOCK_MONOTONIC), and
with the monotonic clock faked too libfaketime moves it to the epoch's scale, which is
no drift at all. The event loop's timers, lease renewals and the lease watch run on the
monotonic clock.

Skipped where `faketime` is not installed, unless PAO_REQUIRE_FAKETIME is set (CI).
"""

from __future__ import annotations

import functools
import glob
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.acceptance.procs import Process, free_port, until_running, wait_ready
from tests.helpers import auth, new_agent

pytestmark = pytest.mark.timeout(300)

Conn = psycopg.Connection[Any]

LEASE_SECONDS = 3
# A run starts this soon after its scheduled time by the database's clock, or it is late.
# Measured here: 1 to 25 ms; a skewed host took two minutes before pao read the database's
# clock (a worker behind, up to its 1 s poll).
ON_TIME = timedelta(seconds=0.5)
QUICK = [{"id": "note", "uses": "log", "with": {"message": "tick"}}]
# Longer than the lease, so the lease must be renewed (by the monotonic clock) to finish.
LONG = [{"id": "nap", "uses": "sleep", "with": {"seconds": LEASE_SECONDS + 2}}]


def _faketime() -> str:
    """libfaketime from Debian's `faketime` package, preloaded into the processes directly:
    the `faketime` command runs its program as a child, which outlives it when killed."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        why = "Debian's faketime is not installed (apt-get install faketime)"
        if os.environ.get("PAO_REQUIRE_FAKETIME"):
            pytest.fail(f"PAO_REQUIRE_FAKETIME is set but {why}")
        pytest.skip(why)
    return found[0]


def _skew_env(faketime: str, skew: str) -> dict[str, str]:
    return {"LD_PRELOAD": faketime, "FAKETIME": skew, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _rows(db: Conn, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _database_now(db: Conn) -> datetime:
    row = db.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    at: datetime = row[0]
    return at


@contextmanager
def _skewed(
    faketime: str, skew: str, name: str, env: dict[str, str], log: Path
) -> Iterator[Process]:
    """`pao <name>` with this host's wall clock `skew` off (libfaketime's offset syntax)."""
    proc = Process([sys.executable, "-m", "pao", name], {**env, **_skew_env(faketime, skew)}, log)
    try:
        yield proc
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("skew", ["+120s", "-120s"])
def test_skewed_hosts_fire_on_time_by_the_databases_clock(
    skew: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    faketime = _faketime()
    token = new_agent(db_url, ["tasks:read", "tasks:write", "runs:read"], name="skewed")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_LEVEL": "info",
        "PAO_PORT": str(port),
        "PAO_SCHEDULER_TICK_MS": "200",
        "PAO_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    base = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        procs = [
            stack.enter_context(_skewed(faketime, skew, name, env, tmp_path / f"{name}.log"))
            for name in ("api", "scheduler", "worker")
        ]
        api = procs[0]
        wait_ready(base, api)
        # The processes really live two minutes off: their own clock says so.
        probe = _skewed_now(faketime, skew)
        off = (probe - _database_now(db)).total_seconds()
        assert abs(off - int(skew.removesuffix("s"))) < 10, off

        with httpx.Client(base_url=base, headers=auth(token), timeout=10) as client:

            def create(**fields: Any) -> str:
                body = {"timezone": "UTC", "misfire_grace_seconds": 60, **fields}
                resp = client.post("/tasks", json=body)
                assert resp.status_code == 201, resp.text
                task_id: str = resp.json()["id"]
                return task_id

            # One-off tasks due a few seconds ahead by the database's clock.
            soon = _database_now(db) + timedelta(seconds=8)
            once = [
                create(
                    title=f"once {i}",
                    schedule_kind="once",
                    schedule_expr=(soon + timedelta(seconds=2 * i)).isoformat(),
                    payload={"pipeline": QUICK},
                )
                for i in range(3)
            ]
            longer = create(
                title="longer than its lease",
                schedule_kind="once",
                schedule_expr=(soon + timedelta(seconds=1)).isoformat(),
                payload={"pipeline": LONG},
            )
            minutely = create(
                title="every minute",
                schedule_kind="cron",
                schedule_expr="* * * * *",
                payload={"pipeline": QUICK},
            )
            # A run asked for now is due now, by the database's clock.
            now_task = create(
                title="run now",
                schedule_kind="event",
                schedule_expr="never.sent",
                payload={"pipeline": QUICK},
            )
            assert client.post(f"/tasks/{now_task}/run_now").status_code == 202

        def settled(task_id: str) -> bool:
            """A run of the task has ended, or an occurrence was not queued (asserted below)."""
            rows = _rows(
                db,
                "SELECT 1 FROM runs WHERE task_id = %s AND finished_at IS NOT NULL "
                "UNION ALL SELECT 1 FROM occurrences WHERE task_id = %s AND decision <> 'queued'",
                (task_id, task_id),
            )
            return bool(rows)

        for task_id in [*once, longer, now_task]:
            what = f"task {task_id} to run, seconds after it fell due by the database's clock"
            until_running(procs, functools.partial(settled, task_id), what, 60)
        # The minutely task's first occurrence is at most a minute away.
        until_running(procs, lambda: settled(minutely), "the minutely task to run", 90)

        for task_id in [*once, longer, minutely, now_task]:
            _assert_once_and_on_time(db, task_id)
        # The long step outlived its lease several times over: renewed, never rescued.
        [run] = _rows(db, "SELECT * FROM runs WHERE task_id = %s", (longer,))
        assert run["status"] == "succeeded", run
        assert run["attempt"] == 1, run
        assert (run["finished_at"] - run["started_at"]).total_seconds() >= LEASE_SECONDS + 2
        work = _rows(db, "SELECT attempt, state FROM due_work WHERE task_id = %s", (longer,))
        assert work == [{"attempt": 1, "state": "succeeded"}], work

        for proc in procs:
            out = proc.output()
            assert "Traceback" not in out, out
            assert " ERROR " not in out, out


def _skewed_now(faketime: str, skew: str) -> datetime:
    """What a process started as the pao processes are takes the time to be."""
    code = "import datetime; print(datetime.datetime.now(datetime.UTC).isoformat())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **_skew_env(faketime, skew)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return datetime.fromisoformat(out.strip())


def _assert_once_and_on_time(db: Conn, task_id: str) -> None:
    """Every occurrence of the task so far ran once, succeeded, and started on time by the
    database's clock; none was judged late, coalesced or missed."""
    decisions = _rows(
        db, "SELECT nominal_at, decision, detail FROM occurrences WHERE task_id = %s", (task_id,)
    )
    assert decisions, f"no occurrence of task {task_id}"
    for d in decisions:
        assert d["decision"] == "queued", d
        assert d["detail"] is None or "late" not in d["detail"], d
    runs = _rows(
        db,
        "SELECT scheduled_for, started_at, status, attempt FROM runs "
        "WHERE task_id = %s AND started_at IS NOT NULL ORDER BY scheduled_for",
        (task_id,),
    )
    assert runs, f"no run of task {task_id} started"
    assert len({r["scheduled_for"] for r in runs}) == len(runs), runs  # once each
    for r in runs:
        assert r["attempt"] == 1, r
        late = r["started_at"] - r["scheduled_for"]
        assert timedelta(0) <= late < ON_TIME, (task_id, r, late)
