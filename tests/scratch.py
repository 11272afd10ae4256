"""Where the tests' throwaway PostgreSQL clusters keep their files: in memory if there is room.

Each test's database is cloned from the migrated template and dropped after it: some 400
files made and removed every time. On a disk mounted with online discard (this project's
CI machine) that took 0.35 s of kernel time per test, about six minutes of a full run on
two cores; in tmpfs it takes 0.03 s. Nothing in these clusters outlives the run, so
nothing is lost by keeping them in memory. Without a tmpfs with room (macOS, a container's
64 MB /dev/shm), they stay on disk as before.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

SHM = Path("/dev/shm")
# The embedded test server's WAL alone may reach a few hundred MB between checkpoints.
MIN_FREE_BYTES = 2 * 1024**3
ROOT = Path(__file__).resolve().parent.parent


def memory_dir() -> Path | None:
    """A tmpfs directory with room for the tests' clusters, or None."""
    try:
        if not os.access(SHM, os.W_OK):
            return None
        stat = os.statvfs(SHM)
    except OSError:
        return None
    return SHM if stat.f_bavail * stat.f_frsize >= MIN_FREE_BYTES else None


def cluster_dir(prefix: str) -> Path:
    """A new directory for a throwaway cluster (or pooler): in memory if there is room."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=memory_dir() or "/tmp"))


def embedded_data_dir() -> Path:
    """The embedded test server's directory: `PAO_TEST_DATA_DIR` if set; else in memory, one
    per checkout (two checkouts' runs never share a server); else `.pao-test`."""
    chosen = os.environ.get("PAO_TEST_DATA_DIR")
    if chosen:
        return Path(chosen)
    memory = memory_dir()
    if memory is None:
        return ROOT / ".pao-test"
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    return memory / f"pao-test-{os.geteuid()}-{checkout}"
