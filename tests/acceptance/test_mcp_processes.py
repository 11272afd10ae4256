"""A real `pao worker` process running the morning briefing on the demo MCP servers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pao.settings import Settings
from tests.acceptance.procs import Process, until_running
from tests.helpers import auth
from tests.integration.test_mcp_api import BRIEFING, demo_tools_file


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path, _ = demo_tools_file(tmp_path)
    return Settings(pool_min_size=1, pool_max_size=4, tools_file=str(path))


def _children(pid: int) -> set[int]:
    """Live processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_process_runs_the_briefing_and_stops_its_servers(
    client: TestClient, writer_token: str, db_url: str, settings: Settings, tmp_path: Path
) -> None:
    assert settings.tools_file is not None
    sink = tmp_path / "sink.jsonl"
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PAO_TOOLS_FILE": settings.tools_file,
        "PAO_LOG_LEVEL": "info",
    }
    task = client.post("/tasks", json=BRIEFING, headers=auth(writer_token))
    assert task.status_code == 201, task.text
    proc = Process([sys.executable, "-m", "pao", "worker"], env, tmp_path / "worker.log")
    try:
        run_id = client.post(
            f"/tasks/{task.json()['id']}/run_now", headers=auth(writer_token)
        ).json()["id"]

        def ended() -> dict[str, Any] | None:
            run: dict[str, Any] = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
            return None if run["status"] in ("queued", "running") else run

        run: dict[str, Any] = until_running([proc], ended, f"run {run_id} to end")
        assert run["status"] == "succeeded", (run, proc.output())
        assert run["steps"][0]["output"]["summary"] == "Chisinau: 3°C, light snow"
        [line] = sink.read_text().splitlines()
        assert json.loads(line)["text"] == "Chisinau: 3°C, light snow"
        servers = _children(proc.proc.pid)
        assert len(servers) == 2, proc.output()  # forecast and message sink, one each
        assert proc.stop() == 0, proc.output()
        assert not [pid for pid in servers if _alive(pid)], "MCP servers outlived the worker"
    finally:
        proc.kill()
