"""A tzdata upgrade that changes a zone's rules, with real `pao scheduler` processes.

A task is stored with pao's own tzdata. Then a second tzdata package is built in a
temporary directory: a copy of the installed one, with a later IANA_VERSION and
America/Havana rewritten from a rule source this test writes (an hour off the installed
rules, all year: the fall-back dropped), compiled with Debian's `zic`. Schedulers
started with PYTHONPATH putting that package first must recompute the stored fire time
to the new rules, once (one decision record, two schedulers started together), so that
`GET /tasks/{id}` and its occurrences agree; a restart recomputes nothing again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from pao.zones import get_zone, tzdata_version
from tests.acceptance.procs import Process, free_port, until_logged, wait_ready
from tests.helpers import SEED_TASK, auth

pytestmark = pytest.mark.timeout(180)

Conn = psycopg.Connection[Any]
ZONE = "America/Havana"
DAILY = "0 9 * * *"


def _zic() -> str:
    found = shutil.which("zic") or next(
        (p for p in ("/usr/sbin/zic", "/usr/bin/zic") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.skip("zic (Debian's libc-bin) is not installed")
    return found


def _later(version: str) -> str:
    """A release after `version` (2026f -> 2027a)."""
    return f"{int(version[:4]) + 1}a"


def _other_tzdata(tmp_path: Path, offset: timedelta) -> tuple[Path, str, ZoneInfo]:
    """A copy of the installed tzdata with a later release and ZONE at `offset` all year:
    the directory to put first on PYTHONPATH, the release, and the new zone."""
    site = tmp_path / "site"
    package = site / "tzdata"
    shutil.copytree(
        Path(str(resources.files("tzdata"))),
        package,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    version = _later(tzdata_version())
    init = package / "__init__.py"
    text, n = re.subn(r'IANA_VERSION = "[^"]*"', f'IANA_VERSION = "{version}"', init.read_text())
    assert n == 1
    init.write_text(text)
    hours = int(offset.total_seconds() // 3600)
    source = tmp_path / "havana.zi"
    source.write_text(
        "# Havana as a later release might have it: one offset all year, no fall-back.\n"
        f"Zone\t{ZONE}\t{hours}:00\t-\tTST\n"
    )
    compiled = tmp_path / "zic"
    subprocess.run([_zic(), "-d", str(compiled), str(source)], check=True, timeout=30)
    target = package / "zoneinfo" / ZONE
    shutil.copyfile(compiled / ZONE, target)
    with target.open("rb") as f:
        zone = ZoneInfo.from_file(f, key=ZONE)
    return site, version, zone


def _next_nine(zone: ZoneInfo, after: datetime) -> datetime:
    """The first 09:00 in `zone` after `after` (a zone with one offset all year)."""
    local = after.astimezone(zone)
    nine = local.replace(hour=9, minute=0, second=0, microsecond=0)
    if nine <= local:
        nine += timedelta(days=1)
    return nine.astimezone(UTC)


def _row(db: Conn, task_id: str) -> tuple[datetime, str]:
    row = db.execute(
        "SELECT next_run_at, tzdata_version FROM tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _recomputed(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT task_id::text, nominal_at FROM occurrences WHERE decision = 'recomputed'"
    ).fetchall()


def _clean(proc: Process) -> None:
    out = proc.output()
    assert "Traceback" not in out, out
    assert " ERROR " not in out, out


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.slow
def test_a_tzdata_upgrade_recomputes_stored_fire_times_once(
    client: TestClient, writer_token: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    def create(timezone: str) -> str:
        body = {**SEED_TASK, "schedule_kind": "cron", "schedule_expr": DAILY, "timezone": timezone}
        resp = client.post("/tasks", json=body, headers=auth(writer_token))
        assert resp.status_code == 201, resp.text
        task_id: str = resp.json()["id"]
        return task_id

    havana, utc = create(ZONE), create("UTC")
    stored, stamp = _row(db, havana)
    assert stamp == tzdata_version()
    utc_time, _ = _row(db, utc)
    # The installed rules' offset at the stored time, and a later release an hour off it.
    old = stored.astimezone(get_zone(ZONE)).utcoffset()
    assert old is not None
    site, version, zone = _other_tzdata(tmp_path, old - timedelta(hours=1))

    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_LOG_LEVEL": "info",
        "PAO_SCHEDULER_TICK_MS": "200",
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    first_pass = f"zone rules of tzdata {version}:"
    argv = [sys.executable, "-m", "pao", "scheduler"]
    # Two schedulers started together: the task is recomputed by one of them, once.
    schedulers = [Process(argv, env, tmp_path / f"scheduler{i}.log") for i in range(2)]
    try:
        for proc in schedulers:
            until_logged(proc, first_pass)
        now = db.execute("SELECT clock_timestamp()").fetchone()
        assert now is not None
        expected = _next_nine(zone, now[0])
        assert expected != stored
        assert _row(db, havana) == (expected, version)
        assert _recomputed(db) == [(havana, stored)]
        # Another zone's time did not move: only its stamp changed.
        assert _row(db, utc) == (utc_time, version)
        for proc in schedulers:
            assert proc.stop() == 0
            _clean(proc)
    finally:
        for proc in schedulers:
            proc.kill()

    # An API on the same release: the task and its coming occurrences agree.
    port = free_port()
    api = Process(
        [sys.executable, "-m", "pao", "api"], {**env, "PAO_PORT": str(port)}, tmp_path / "api.log"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api)
        got = httpx.get(f"{base}/tasks/{havana}", headers=auth(writer_token), timeout=10).json()
        assert got["next_run_at"] == _iso(expected)
        coming = httpx.get(
            f"{base}/tasks/{havana}/occurrences",
            params={"count": 2},
            headers=auth(writer_token),
            timeout=10,
        ).json()["items"]
        assert [item["at"] for item in coming] == [
            _iso(expected),
            _iso(expected + timedelta(days=1)),
        ]
    finally:
        api.kill()

    # A restart finds nothing computed with an older release: nothing moves again.
    again = Process(argv, env, tmp_path / "scheduler-again.log")
    try:
        until_logged(again, f"{first_pass} 0 tasks' fire times")
        assert _row(db, havana) == (expected, version)
        assert len(_recomputed(db)) == 1
        assert again.stop() == 0
        _clean(again)
    finally:
        again.kill()
