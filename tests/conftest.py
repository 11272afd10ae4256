"""How tests find PostgreSQL.

`DATABASE_URL` set: that server. Unset: the embedded server (pgserver) under
`PAO_TEST_DATA_DIR` (default: in memory when there is room, else `.pao-test`; see
tests/scratch.py). The migrations are applied once to a template database; every test
that asks for `db_url` gets a fresh database cloned from it, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

from pao.embedded import ensure_embedded
from pao.migrate import migrate
from tests.pgcluster import RUN_AS, Cluster
from tests.scratch import embedded_data_dir


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
        url = ensure_embedded(embedded_data_dir())  # stopped when the test session exits
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


# --------------------------------------------------------------------------- xdist order

# Seconds the longest tests take on this 2-core machine in a full run (measured beside other
# work). Under pytest-xdist (`make test`) the tests start longest first, so that the run does
# not end on one of them while the other workers stand idle; many of these wait for a
# minute's boundary, and side by side they wait at once. A name is a test's node id or a
# prefix of it (a file); a test not named counts by its directory below. Only the order
# changes: every test runs, with the same checks.
LONGEST: dict[str, float] = {
    "tests/acceptance/test_load.py": 95,
    "tests/acceptance/test_scheduler_processes.py::test_two_and_three": 70,
    "tests/acceptance/test_clock_skew.py": 50,
    "tests/acceptance/test_scheduler_processes.py::test_scheduler_catches_up": 48,
    "tests/acceptance/test_failover.py": 40,
    "tests/acceptance/test_dev.py": 40,
    "tests/integration/test_openapi_fuzz.py::test_the_api_keeps_its_openapi_promises": 30,
    "tests/acceptance/test_pgbouncer.py::test_processes_behind_pgbouncer": 35,
    "tests/acceptance/test_asset_processes.py::test_a_200_mb_upload": 31,
    "tests/acceptance/test_database_restart.py": 25,
    "tests/acceptance/test_bind_processes.py::test_forwarded_for": 18,
    "tests/acceptance/test_dashboard.py": 15,
    "tests/acceptance/test_cli_assets.py": 15,
    "tests/acceptance/test_cli_client.py": 15,
    "tests/acceptance/test_claims_work_cli.py": 15,
    "tests/acceptance/test_asset_processes.py": 15,
    "tests/acceptance/test_pgbouncer.py::test_without_a_listen_url": 12,
    "tests/unit/test_schedule.py::test_restarted_rrule_matches_plain_dateutil": 8,
    "tests/acceptance/test_scheduler_restart.py": 9,
    "tests/acceptance/test_budget_processes.py": 8,
    "tests/integration/test_health.py::test_api_answers_503": 8,
    "tests/integration/test_mcp_hub.py": 4,
    "tests/unit/test_k8s_manifests.py": 3,
    "tests/unit/test_compose.py": 2.5,
    "tests/acceptance/": 6,
    "tests/integration/": 0.5,
    "tests/unit/": 0.05,
}


def _estimate(nodeid: str) -> float:
    """The seconds LONGEST gives the test: its longest matching name's."""
    best = max((name for name in LONGEST if nodeid.startswith(name)), key=len, default=None)
    return LONGEST[best] if best is not None else 0.0


# Files whose tests share a module-scoped fixture (a large database built once): each goes
# to one worker whole, which builds it once rather than once per worker.
SHARED_SETUP = frozenset(
    {"tests/integration/test_claim_plan.py", "tests/integration/test_cursor_plans.py"}
)


def _unit(nodeid: str) -> str:
    """What is handed to one worker at once: the test, or its whole file if in SHARED_SETUP."""
    path = nodeid.split("::", 1)[0]
    return path if path in SHARED_SETUP else nodeid


def pytest_configure(config: pytest.Config) -> None:
    """As root, add the system user the embedded server, PgBouncer and the test clusters run
    as, once, before any test process starts: tests starting together each ran `useradd`,
    and on a fresh machine one of them was left with a user id that no longer existed."""
    if hasattr(config, "workerinput") or os.geteuid() != 0:
        return
    from pgserver.utils import ensure_user_exists

    ensure_user_exists(RUN_AS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker: the longest units first. Every worker orders the same collection
    the same way, and the scheduler below hands the units out in this order."""
    if not hasattr(config, "workerinput"):
        return  # one process: the files' own order
    seconds: dict[str, float] = {}
    for item in items:
        unit = _unit(item.nodeid)
        seconds[unit] = seconds.get(unit, 0.0) + _estimate(item.nodeid)
    items.sort(key=lambda item: -seconds[_unit(item.nodeid)])


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist load` (`make test`): hand out one unit at a time, in the workers' order
    above, to whichever worker has little left: the longest tests start first, the run does
    not end on a long one started last, and a SHARED_SETUP file stays on one worker.
    (`--dist loadgroup` would do it with marks, but pytest-xdist 3.8 cannot rename a test
    under pytest 9, so its groups are lost.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return LongestFirst(config, log)
