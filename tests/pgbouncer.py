"""A real PgBouncer (Debian's package) in front of a test's PostgreSQL.

It listens on loopback only, in transaction mode unless told otherwise, trusting the
users of its user list as docs/pgbouncer.md describes. PgBouncer refuses to run as root,
so as root it runs as the same unprivileged system user as the tests' own clusters.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.scratch import cluster_dir

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pgserver.utils import ensure_user_exists

PGBOUNCER = Path(os.environ.get("PAO_PGBOUNCER", "/usr/sbin/pgbouncer"))
INSTALL_HINT = "install it with: apt-get install -y --no-install-recommends pgbouncer"
RUN_AS = "pgserver"

# The essence of docs/pgbouncer.md's pgbouncer.ini; the test's own values filled in.
INI = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
pool_mode = {pool_mode}
auth_type = trust
auth_file = {dir}/userlist.txt
max_client_conn = 500
default_pool_size = 40
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


def missing() -> str | None:
    """Why no PgBouncer can run here, or None when one can."""
    if not os.access(PGBOUNCER, os.X_OK):
        return f"{PGBOUNCER} is not installed; {INSTALL_HINT}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bouncer:
    """One PgBouncer process; `url(db_url)` is `db_url` through it."""

    def __init__(self, upstream_url: str, pool_mode: str = "transaction") -> None:
        params = conninfo_to_dict(upstream_url)
        self.user = str(params.get("user") or os.environ.get("USER") or "postgres")
        self.dir = cluster_dir("pao-pgbouncer-")
        self.port = _free_port()
        self._run_as: str | None = None
        if os.geteuid() == 0:
            ensure_user_exists(RUN_AS)
            self._run_as = RUN_AS
        ini = INI.format(
            host=params.get("host") or "localhost",
            port=params.get("port") or 5432,
            listen_port=self.port,
            pool_mode=pool_mode,
            dir=self.dir,
        )
        (self.dir / "pgbouncer.ini").write_text(ini)
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.proc = subprocess.Popen(
            [str(PGBOUNCER), str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            user=self._run_as,
        )
        self._wait_listening()

    def url(self, db_url: str) -> str:
        return make_conninfo(db_url, host="127.0.0.1", port=str(self.port))

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}):\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}:\n{self.log()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer(upstream_url: str, pool_mode: str = "transaction") -> Iterator[Bouncer]:
    bouncer = Bouncer(upstream_url, pool_mode)
    try:
        yield bouncer
    finally:
        bouncer.close()
