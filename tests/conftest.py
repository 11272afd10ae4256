"""How tests find PostgreSQL.

`DATABASE_URL` set: that server. Unset: the embedded server (pgserver) under
`PAO_TEST_DATA_DIR` (default `.pao-test`). The migrations are applied once to a
template database; every test that asks for `db_url` gets a fresh database
cloned from it, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

from pao.embedded import ensure_embedded
from pao.migrate import migrate
from tests.pgcluster import Cluster

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    url: str
    host: str
    port: int
    user: str
    password: str | None

    def url_for(self, dbname: str) -> str:
        return make_conninfo(self.url, dbname=dbname)


def _server_from_url(url: str) -> Server:
    params = conninfo_to_dict(url)
    return Server(
        url=url,
        host=str(params.get("host") or "localhost"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or os.environ.get("USER") or "postgres"),
        password=str(params["password"]) if params.get("password") else None,
    )


@pytest.fixture(scope="session")
def pg_server() -> Server:
    url = os.environ.get("DATABASE_URL")
    if not url:
        data_dir = Path(os.environ.get("PAO_TEST_DATA_DIR") or ROOT / ".pao-test")
        url = ensure_embedded(data_dir)  # stopped when the test session exits
        _throwaway(url)
    return _server_from_url(url)


def _throwaway(url: str) -> None:
    """The embedded test server keeps nothing worth a flush: without fsync a test's database
    is cloned and dropped in about 70 ms rather than 260. Never done to a DATABASE_URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name in ("fsync", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {name} = off")
        conn.execute("SELECT pg_reload_conf()")


def _janitor(server: Server, dbname: str, **kwargs: object) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=dbname,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    """A migrated template, built once per session."""
    name = f"pao_tmpl_{os.getpid()}"
    janitor = _janitor(pg_server, name, as_template=True)
    janitor.drop()
    with janitor:
        asyncio.run(migrate(pg_server.url_for(name)))
        yield name


_counter = itertools.count()


@pytest.fixture
def db_url(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"pao_test_{os.getpid()}_{next(_counter)}"
    with _janitor(pg_server, name, template_dbname=template_db):
        yield pg_server.url_for(name)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain autocommit connection for assertions."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL of this test's own, which it may stop and start."""
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.destroy()
