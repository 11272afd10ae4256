"""The embedded PostgreSQL used when `DATABASE_URL` is unset.

`pgserver` ships PostgreSQL binaries inside a wheel, so a laptop needs nothing
installed by hand. Every `pao` process on the machine that points at the same
data directory shares one server: pgserver keeps a list of the processes using
it and stops the server when the last of them exits.
"""

from __future__ import annotations

import fcntl
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pao.errors import PaoError

log = logging.getLogger(__name__)


class EmbeddedDatabaseError(PaoError):
    """The embedded PostgreSQL could not be started; see its log under PAO_DATA_DIR."""


def ensure_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded server under `data_dir` and return its URL.

    The server stops when the last process that joined it exits.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    # pgserver checks for the directory and then creates it, outside its lock: processes
    # started together on a fresh data directory (`pao dev`, parallel tests) would race
    # there. An existing empty directory is initialised under the lock, by one of them.
    pgdata.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

        try:
            with _held(data_dir / ".start.lock"):
                server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedDatabaseError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc}; "
                f"see {pgdata / 'log'} or set DATABASE_URL to use your own server"
            ) from exc
    url: str = server.get_uri()
    log.info("embedded PostgreSQL running in %s", pgdata)
    return url


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """One process at a time: as root, pgserver adds its system user before taking its own
    lock, and two `useradd`s at once on a fresh machine left one process with a user id that
    no longer existed (initdb: "could not look up effective user ID")."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def database_url(database_url: str | None, data_dir: Path) -> str:
    """The URL to use: the configured one, else the embedded server's."""
    if database_url:
        return database_url
    return ensure_embedded(data_dir)
