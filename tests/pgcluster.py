"""A throwaway PostgreSQL cluster that a test may stop and start at will.

Built from the binaries the pgserver wheel ships, so it needs nothing
installed. As root the server runs as an unprivileged system user, since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import warnings

from tests.scratch import cluster_dir

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_user_exists

RUN_AS = "pgserver"


class Cluster:
    def __init__(self) -> None:
        self.root = cluster_dir("pao-cluster-")
        self.data = self.root / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            ensure_user_exists(RUN_AS)
            self._user = RUN_AS
            entry = pwd.getpwnam(RUN_AS)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}"

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / exe), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self._user,
            timeout=60,
        )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            f"-h '' -k {self.root} -c fsync=off",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
