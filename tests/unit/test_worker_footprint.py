"""What a worker process loads, and its metrics: nothing it does not use, counted once on.

Each library held without use is resident memory in every worker replica.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_worker_with_metrics_off_never_loads_the_metrics_library() -> None:
    out = _python(
        """
        import sys
        import pao.cli
        pao.cli._make_parser(["api", "scheduler", "worker"])  # what `pao worker` builds first
        import worker.main, worker.service
        from worker import metrics
        metrics.claimed(3, 0.01)
        metrics.run_ended("succeeded")
        metrics.step_ended("log", "succeeded", 0.001)
        unused = ("prometheus_client", "httpx", "mcp", "jsonschema", "fastapi", "apscheduler")
        print(sorted(name for name in unused if name in sys.modules))
        """
    )
    assert out == "[]"


def test_enabled_metrics_count() -> None:
    out = _python(
        """
        from prometheus_client import REGISTRY
        from worker import metrics
        metrics.claimed(3, 0.01)  # before enable: not counted
        metrics.enable(running=lambda: 7)
        metrics.claimed(2, 0.01)
        metrics.run_ended("succeeded")
        metrics.step_ended("log", "succeeded", 0.001)
        get = REGISTRY.get_sample_value
        print(get("pao_worker_claimed_total"),
              get("pao_worker_runs_total", {"outcome": "succeeded"}),
              get("pao_worker_step_duration_seconds_count", {"tool": "log", "status": "succeeded"}),
              get("pao_worker_running"))
        """
    )
    assert out == "2.0 1.0 1.0 7.0"
