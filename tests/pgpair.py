"""A PostgreSQL primary and its streaming standby (Debian's PostgreSQL 15), for failover tests.

Both run on loopback, each on its own port, from `/usr/lib/postgresql/15/bin` (or
`PAO_PG15_BIN`). The standby is made with `pg_basebackup -R` over a replication slot, and
replication is synchronous: the primary names the standby in `synchronous_standby_names`
with `synchronous_commit = on`, so a commit is acknowledged only once the standby has
flushed its WAL, and a promoted standby holds every commit a client was told about. (`on`
rather than `remote_apply`: promotion replays everything flushed before it opens for
writes, and pao never reads from a standby, so waiting for the replay too buys nothing.)

The standby itself names no synchronous standby: once promoted it stands alone, and a
primary that waits for a standby it does not have never acknowledges a commit.

As root the servers run as the same unprivileged system user as the tests' other
clusters, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import until
from tests.scratch import cluster_dir

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pgserver.utils import ensure_user_exists

BIN = Path(os.environ.get("PAO_PG15_BIN", "/usr/lib/postgresql/15/bin"))
INSTALL_HINT = "install it with: apt-get install -y --no-install-recommends postgresql-15"
RUN_AS = "pgserver"
STANDBY_NAME = "standby"
SLOT = "standby_slot"

# Both servers' settings (the standby inherits them from the base backup); on the command
# line, each server's port and, for the primary alone, the synchronous standby.
CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
max_connections = 300
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
synchronous_commit = on
wal_receiver_status_interval = 1s
"""


def missing() -> str | None:
    """Why no PostgreSQL 15 pair can run here, or None when one can."""
    for exe in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not os.access(BIN / exe, os.X_OK):
            return f"{BIN / exe} is not installed; {INSTALL_HINT}"
    return None


def require() -> None:
    """Skip the calling test where no pair can run, with the reason; fail instead when
    PAO_REQUIRE_FAILOVER is set (CI, which installs PostgreSQL 15)."""
    why = missing()
    if why is None:
        return
    if os.environ.get("PAO_REQUIRE_FAILOVER"):
        pytest.fail(f"PAO_REQUIRE_FAILOVER is set but {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server of the pair: its data directory, port and log."""

    def __init__(self, pair: Pair, name: str) -> None:
        self.pair = pair
        self.name = name
        self.data = pair.root / name
        self.port = _free_port()
        self.log = pair.root / f"{name}.log"

    @property
    def url(self) -> str:
        """This server alone."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, *options: str) -> None:
        opts = " ".join([f"-p {self.port}", *options])
        self.pair.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", opts, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self.pair.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        """Out of recovery and open for writes (`-w`: returns once it is)."""
        self.pair.run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def in_recovery(self) -> bool:
        with psycopg.connect(self.url, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


class Pair:
    """A primary streaming synchronously to a hot standby, both started."""

    def __init__(self) -> None:
        self.root = cluster_dir("pao-pair-")
        self._user: str | None = None
        if os.geteuid() == 0:
            ensure_user_exists(RUN_AS)
            self._user = RUN_AS
            entry = pwd.getpwnam(RUN_AS)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)
        self.primary = Server(self, "primary")
        self.standby = Server(self, "standby")
        self._started: list[Server] = []

    @property
    def url(self) -> str:
        """Both servers, for libpq to pick whichever accepts writes."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def run(self, exe: str, *args: str) -> None:
        done = subprocess.run(
            [str(BIN / exe), *args],
            capture_output=True,
            text=True,
            user=self._user,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{exe} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def create(self) -> None:
        """initdb the primary, start it, copy it to the standby, start that."""
        p, s = self.primary, self.standby
        self.run("initdb", "-D", str(p.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (p.data / "postgresql.conf").open("a") as conf:
            conf.write(CONF.format(sockets=self.root))
        p.start(f"-c synchronous_standby_names={STANDBY_NAME}")
        self._started.append(p)
        with psycopg.connect(p.url, autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (SLOT,))
        self.run(
            "pg_basebackup",
            "-D",
            str(s.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(p.port),
            "-U",
            "postgres",
            "-R",
            "-S",
            SLOT,
            "-X",
            "stream",
            "-c",
            "fast",
            "-d",
            f"host=127.0.0.1 port={p.port} user=postgres application_name={STANDBY_NAME}",
        )
        s.start()
        self._started.append(s)
        self.wait_synchronous()

    def wait_synchronous(self, timeout: float = 60) -> None:
        """Until the primary counts the standby as its synchronous one."""
        with psycopg.connect(self.primary.url, autocommit=True) as conn:

            def synchronous() -> bool:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (STANDBY_NAME,),
                ).fetchone()
                return bool(row and row[0] == "sync")

            until(synchronous, "the standby to be synchronous", timeout, every=0.1)

    def wait_replayed(self, timeout: float = 60) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        with psycopg.connect(self.primary.url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = row[0]
        with psycopg.connect(self.standby.url, autocommit=True) as conn:

            def replayed() -> bool:
                lag = conn.execute(
                    "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (lsn,)
                ).fetchone()
                return bool(lag and lag[0] is not None and lag[0] <= 0)

            until(replayed, f"the standby to replay up to {lsn}", timeout, every=0.1)

    def destroy(self) -> None:
        for server in reversed(self._started):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                server.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    """A started primary and synchronous standby for the block; both gone afterwards."""
    made = Pair()
    try:
        made.create()
        yield made
    finally:
        made.destroy()
