"""pao's processes run on uvloop where it is installed, and on asyncio's loop otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from pao import eventloop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_processes_run_on_uvloop() -> None:
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_without_uvloop_the_standard_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert eventloop.run(_loop_module()).startswith("asyncio")
