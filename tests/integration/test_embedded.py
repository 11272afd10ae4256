"""The embedded server, started by several processes at once on a fresh data directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

JOIN = """
import sys
from pathlib import Path
from pao.embedded import ensure_embedded
print(ensure_embedded(Path(sys.argv[1])), flush=True)
sys.stdin.read()  # stay joined until the test has connected
"""


def test_processes_started_together_on_a_fresh_directory_share_one_server(
    tmp_path: Path,
) -> None:
    # `pao dev` starts the API, scheduler and worker at once, and so do parallel tests;
    # each must join the one server, none may fail on the directory another just made.
    data = tmp_path / "data"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOIN, str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        urls = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
        errors = [p.stderr.read() for p in procs if p.poll() not in (None, 0) and p.stderr]
        assert not errors, errors
        assert len(set(urls)) == 1, urls
        assert urls[0].startswith("postgresql://"), urls
        with psycopg.connect(urls[0]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            p.wait(timeout=60)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
