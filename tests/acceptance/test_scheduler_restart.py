"""A scheduler rides out a PostgreSQL restart without help."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psycopg
import pytest

from pao.migrate import migrate
from tests.acceptance.procs import Process, until_logged
from tests.helpers import until
from tests.pgcluster import Cluster


def _last_beat(url: str) -> float | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(seen_at)) FROM process_heartbeats "
                "WHERE kind = 'scheduler'"
            ).fetchone()
    except psycopg.OperationalError:
        return None
    return float(row[0]) if row and row[0] is not None else None


def _wait_for_beat_after(url: str, after: float, timeout: float = 30) -> float:
    def fresh() -> float | None:
        beat = _last_beat(url)
        return beat if beat is not None and beat > after else None

    beat: float = until(fresh, "a fresh scheduler heartbeat", timeout, every=0.3)
    return beat


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_scheduler_survives_a_database_restart(cluster: Cluster, tmp_path: Path, mode: str) -> None:
    asyncio.run(migrate(cluster.url))
    env = {**os.environ, "DATABASE_URL": cluster.url, "PAO_LOG_LEVEL": "info"}
    sched = Process([sys.executable, "-m", "pao", "scheduler"], env, tmp_path / "scheduler.log")
    try:
        first = _wait_for_beat_after(cluster.url, 0)
        cluster.stop(mode)
        # Past the pool's wait: the scheduler's ticks fail meanwhile, and it says so.
        until_logged(sched, "database unavailable")
        assert sched.proc.poll() is None, sched.output()
        cluster.start()
        _wait_for_beat_after(cluster.url, first + 1)
        assert sched.stop() == 0
    finally:
        sched.kill()
    assert "Traceback" not in sched.output()
