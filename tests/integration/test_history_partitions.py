"""The history's monthly partitions (version_0020.sql): made ahead across a month boundary,
written late, dropped whole by retention while a listing pages through them, made by two
schedulers at once, and the migration that moved the rows already there."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb
from pytest_postgresql.janitor import DatabaseJanitor

from pao import db as pao_db
from pao.db import connect
from pao.migrate import available, migrate
from pao.settings import Settings
from pao.sql import QUERIES
from pao.store import partitions
from scheduler.housekeeping import month_start
from scheduler.service import Scheduler
from tests.conftest import Server
from tests.helpers import SEED_TASK, auth

T = TypeVar("T")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def with_schedulers(
    db_url: str,
    body: Callable[[list[Scheduler]], Awaitable[T]],
    *,
    clock: Callable[[], datetime],
    count: int = 1,
    **settings: Any,
) -> T:
    async def go() -> T:
        pool = pao_db.make_pool(db_url, min_size=1, max_size=4)
        await pool.open(wait=True)
        try:
            scheds = [
                Scheduler(Settings(**settings), pool, clock=clock, process_id=f"s{i}")
                for i in range(count)
            ]
            return await body(scheds)
        finally:
            await pool.close()

    return asyncio.run(go())


def _partitions(db: psycopg.Connection[Any], parent: str) -> list[str]:
    rows = db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        (parent,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _suffix(at: datetime) -> str:
    return f"{at:%Y_%m}"


def _months(at: datetime, n: int) -> datetime:
    """The start of the month `n` months after `at`'s (n may be negative)."""
    start = month_start(at)
    index = start.year * 12 + start.month - 1 + n
    return start.replace(year=index // 12, month=index % 12 + 1)


def _where(db: psycopg.Connection[Any], table: str, key: str, value: object) -> str:
    row = db.execute(
        f"SELECT tableoid::regclass::text FROM {table} WHERE {key} = %s",
        (value,),
    ).fetchone()
    assert row is not None, f"no row of {table} with {key} = {value}"
    return str(row[0])


def _task(client: TestClient, token: str) -> str:
    resp = client.post("/tasks", json=SEED_TASK, headers=auth(token))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _finished_runs(db: psycopg.Connection[Any], task_id: str, times: list[datetime]) -> list[str]:
    """A finished run at each time, its id made at that time (as the database makes them),
    each with a log line; returns the run ids."""
    rows = db.execute(
        "WITH w AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason, state, "
        "                                 finished_at) "
        "    SELECT %(task)s, t, t, 'run_now', 'succeeded', t "
        "    FROM unnest(%(times)s::timestamptz[]) t "
        "    RETURNING id, task_id, scheduled_for), "
        "r AS (INSERT INTO runs (id, due_work_id, task_id, status, scheduled_for, queued_at, "
        "                        started_at, finished_at) "
        "    SELECT pao_uuid_v7(scheduled_for), id, task_id, 'succeeded', scheduled_for, "
        "           scheduled_for, scheduled_for, scheduled_for FROM w RETURNING id), "
        "l AS (INSERT INTO run_logs (run_id, message) SELECT id, 'hello' FROM r) "
        "SELECT id::text FROM r",
        {"task": task_id, "times": times},
    ).fetchall()
    return [str(r[0]) for r in rows]


def test_run_ids_are_time_ordered_and_land_in_their_months_partition(
    client: TestClient, writer_token: str, db: psycopg.Connection[Any]
) -> None:
    task = _task(client, writer_token)
    ids = [
        client.post(f"/tasks/{task}/run_now", headers=auth(writer_token)).json()["id"]
        for _ in range(3)
    ]
    assert [uuid.UUID(i).version for i in ids] == [7, 7, 7]
    assert ids == sorted(ids)  # later runs, larger ids
    now = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    for run_id in ids:
        assert _where(db, "runs", "id", run_id) == f"runs_p{_suffix(now)}"
        assert client.get(f"/runs/{run_id}", headers=auth(writer_token)).status_code == 200


def test_a_month_boundary_crossed_finds_its_partitions_made_ahead(
    db_url: str, db: psycopg.Connection[Any], client: TestClient, writer_token: str
) -> None:
    task = _task(client, writer_token)
    # Two years on, a second before a month starts; a long retention keeps today's months.
    clock = FakeClock(_months(datetime.now(UTC), 24) - timedelta(seconds=1))
    first = month_start(clock.at)

    async def housekeeping(scheds: list[Scheduler]) -> None:
        await scheds[0].housekeeping()

    with_schedulers(db_url, housekeeping, clock=clock, retention_days=3650)
    made = {_suffix(_months(first, n)) for n in range(3)}
    for parent in ("runs", "run_logs", "occurrences"):
        names = set(_partitions(db, parent))
        assert {f"{parent}_p{s}" for s in made} <= names
        assert f"{parent}_p{_suffix(_months(first, 3))}" not in names
        assert f"{parent}_default" in names

    # The clock crosses into the next month: one more month is made ahead, nothing else moves.
    before = {p: _partitions(db, p) for p in ("runs", "run_logs", "occurrences")}
    clock.at += timedelta(seconds=2)
    with_schedulers(db_url, housekeeping, clock=clock, retention_days=3650)
    fourth = _suffix(_months(first, 3))
    for parent in ("runs", "run_logs", "occurrences"):
        assert _partitions(db, parent) == sorted([*before[parent], f"{parent}_p{fourth}"])

    # A decision just before and just after the boundary: each in its own month.
    for at in (clock.at - timedelta(seconds=2), clock.at):
        db.execute(
            "INSERT INTO occurrences (task_id, nominal_at, decision) VALUES (%s, %s, 'missed')",
            (task, at),
        )
        assert _where(db, "occurrences", "nominal_at", at) == f"occurrences_p{_suffix(at)}"
    # A run whose id falls in the new month (made by the database at that time).
    run = _finished_runs(db, task, [clock.at])[0]
    assert _where(db, "runs", "id", run) == f"runs_p{_suffix(clock.at)}"
    assert _where(db, "run_logs", "run_id", run) == f"run_logs_p{_suffix(clock.at)}"


def test_a_late_write_lands_in_its_old_month_or_in_the_default(
    db_url: str, db: psycopg.Connection[Any], client: TestClient, writer_token: str
) -> None:
    task = _task(client, writer_token)
    now = datetime.now(UTC)
    old = _months(now, -3) + timedelta(days=2)  # a month with a partition (made below)
    older = _months(now, -6) + timedelta(days=2)  # a month without one
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM pao_history_partitions_ensure(%s, 0)", (old,))
    late, orphan = _finished_runs(db, task, [old, older])
    assert _where(db, "runs", "id", late) == f"runs_p{_suffix(old)}"
    assert _where(db, "runs", "id", orphan) == "runs_default"

    # Lines written to them now go with their run, and read back through the API.
    for run_id in (late, orphan):
        db.execute("INSERT INTO run_logs (run_id, message) VALUES (%s, 'late')", (run_id,))
        logs = client.get(f"/runs/{run_id}/logs", headers=auth(writer_token))
        assert logs.status_code == 200, logs.text
        assert [line["message"] for line in logs.json()["items"]] == ["hello", "late"]
        run = client.get(f"/runs/{run_id}", headers=auth(writer_token)).json()
        assert run["status"] == "succeeded"
    assert _where(db, "run_logs", "message", "late") in {
        f"run_logs_p{_suffix(old)}",
        "run_logs_default",
    }
    # A decision record for a long-gone time: the default partition takes it.
    db.execute(
        "INSERT INTO occurrences (task_id, nominal_at, decision) VALUES (%s, %s, 'missed')",
        (task, older),
    )
    assert _where(db, "occurrences", "nominal_at", older) == "occurrences_default"

    # That month's partition cannot be made now (its run sits in the default): reported,
    # not raised, and the rest of the maintenance goes on.
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT partition_name, created, detail FROM pao_history_partitions_ensure(%s, 1)",
            (older,),
        ).fetchall()
    outcome = {name: (created, detail) for name, created, detail in rows}
    assert outcome[f"runs_p{_suffix(older)}"][0] is False
    assert "default partition" in outcome[f"runs_p{_suffix(older)}"][1]
    assert outcome[f"runs_p{_suffix(_months(older, 1))}"] == (True, None)
    assert _where(db, "runs", "id", orphan) == "runs_default"


@pytest.mark.parametrize("statement", ["due_work_claim", "due_work_claim_start"])
def test_one_claim_and_one_end_reach_runs_of_several_months(
    db: psycopg.Connection[Any], client: TestClient, writer_token: str, statement: str
) -> None:
    """A batch mixing work queued months ago with work queued now: the claim and the end
    bound the runs' ids once for the whole batch, from its oldest occurrence, and must
    still reach every run, whichever month (or the default partition) it is in."""
    task = _task(client, writer_token)
    now = datetime.now(UTC)
    old = _months(now, -3) + timedelta(days=2)  # a month with a partition (made below)
    older = _months(now, -6) + timedelta(days=2)  # a month without one: the default
    db.execute("SELECT count(*) FROM pao_history_partitions_ensure(%s, 0)", (old,))
    made = db.execute(
        "WITH w AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason, created_at, "
        "                                 run_id) "
        "    SELECT %(task)s, t, t, 'run_now', t, pao_uuid_v7(t) "
        "    FROM unnest(%(times)s::timestamptz[]) t "
        "    RETURNING id, task_id, scheduled_for, created_at, run_id) "
        "INSERT INTO runs (id, due_work_id, task_id, scheduled_for, queued_at) "
        "SELECT run_id, id, task_id, scheduled_for, created_at FROM w "
        "RETURNING id, due_work_id",
        {"task": task, "times": [old, older, now]},
    ).fetchall()
    homes = {_where(db, "runs", "id", run_id) for run_id, _ in made}
    assert homes == {f"runs_p{_suffix(old)}", "runs_default", f"runs_p{_suffix(now)}"}
    work = [work_id for _, work_id in made]

    lease = {"worker_id": "w1", "lease_seconds": 60}
    if statement == "due_work_claim":
        params: dict[str, Any] = {**lease, "limit": 10}
    else:
        params = {**lease, "ids": work}
    with db.transaction():
        started = db.execute(QUERIES[statement], params).fetchall()
    assert len(started) == 3, started
    running = db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()
    assert running == (3,)

    endings = [
        {"id": w, "attempt": 1, "state": "succeeded", "steps": [], "error": None} for w in work
    ]
    ended = db.execute(
        QUERIES["due_work_finish_many"], {"endings": Jsonb(endings), "worker_id": "w1"}
    ).fetchall()
    assert sorted(r[0] for r in ended) == sorted(work)
    statuses = db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    assert statuses == [("succeeded", 3)]


def test_retention_drops_a_month_while_a_listing_pages_through_it(
    db_url: str, db: psycopg.Connection[Any], client: TestClient, writer_token: str
) -> None:
    task = _task(client, writer_token)
    now = datetime.now(UTC)
    gone, kept, this = _months(now, -2), _months(now, -1), _months(now, 0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM pao_history_partitions_ensure(%s, 1)", (gone,))

    def times(start: datetime) -> list[datetime]:
        return [start + timedelta(hours=1, minutes=i) for i in range(12)]

    old_runs = _finished_runs(db, task, times(gone))
    kept_runs = _finished_runs(db, task, times(kept))
    new_runs = _finished_runs(db, task, times(this))
    assert {_where(db, "runs", "id", r) for r in old_runs} == {f"runs_p{_suffix(gone)}"}
    # What a month's runs made goes with them: an asset with its bytes, a remote step.
    owner = db.execute("SELECT created_by FROM tasks WHERE id = %s", (task,)).fetchone()[0]  # type: ignore[index]
    asset = db.execute(
        "INSERT INTO assets (id, created_by, media_type, size, sha256, chunk_bytes, run_id) "
        "VALUES (gen_random_uuid(), %s, 'text/plain', 5, decode(repeat('ab', 32), 'hex'), 5, %s) "
        "RETURNING id",
        (owner, old_runs[0]),
    ).fetchone()[0]  # type: ignore[index]
    db.execute("INSERT INTO asset_chunks (asset_id, seq, data) VALUES (%s, 0, 'hello')", (asset,))
    db.execute("INSERT INTO task_types (name, parameters_schema) VALUES ('probe.remote', '{}')")
    db.execute(
        "INSERT INTO remote_steps (run_id, step_index, step_id, task_type, parameters, "
        "idempotency_key) VALUES (%s, 0, 'far', 'probe.remote', '{}', 'k')",
        (old_runs[1],),
    )
    assert db.execute("SELECT bytes FROM asset_usage").fetchone() == (5,)

    def page(cursor: str | None) -> tuple[list[str], str | None]:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        resp = client.get("/runs", params=params, headers=auth(writer_token))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        return [r["id"] for r in body["items"]], body["next_cursor"]

    # Two pages in: this month's twelve, then the kept month's first eight.
    seen, cursor = page(None)
    more, cursor = page(cursor)
    seen += more
    assert cursor is not None
    assert seen == [*reversed(new_runs), *reversed(kept_runs)][:20]

    # Retention 20 days, the clock 10 days into this month: the month before last ended
    # before the retention (dropped whole), last month did not (kept whole).
    clock = FakeClock(this + timedelta(days=10))

    async def housekeeping(scheds: list[Scheduler]) -> int:
        return await scheds[0].housekeeping()

    with_schedulers(db_url, housekeeping, clock=clock, retention_days=20)
    assert f"runs_p{_suffix(gone)}" not in _partitions(db, "runs")
    assert f"run_logs_p{_suffix(gone)}" not in _partitions(db, "run_logs")
    assert f"occurrences_p{_suffix(gone)}" not in _partitions(db, "occurrences")
    assert f"runs_p{_suffix(kept)}" in _partitions(db, "runs")

    # The listing goes on from its cursor: the rest of the kept month, then the end.
    while cursor is not None:
        more, cursor = page(cursor)
        seen += more
    assert seen == [*reversed(new_runs), *reversed(kept_runs)]
    # Nothing is left of the dropped month: its work (row deletes, before the retention's
    # month), its asset and the asset's bytes and quota, its remote step.
    ids = old_runs
    assert db.execute(
        "SELECT count(*) FROM runs WHERE id = ANY(%s::uuid[])", (ids,)
    ).fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM due_work WHERE scheduled_for < %s", (kept,)
    ).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM assets").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM asset_chunks").fetchone() == (0,)
    assert db.execute("SELECT bytes FROM asset_usage").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM remote_steps").fetchone() == (0,)
    # The kept month's work and logs are all there.
    assert db.execute(
        "SELECT count(*) FROM run_logs WHERE run_id = ANY(%s::uuid[])", (kept_runs,)
    ).fetchone() == (12,)


def test_a_month_with_unfinished_work_is_kept_past_the_retention(
    db_url: str, db: psycopg.Connection[Any], client: TestClient, writer_token: str
) -> None:
    task = _task(client, writer_token)
    now = datetime.now(UTC)
    gone = _months(now, -3)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM pao_history_partitions_ensure(%s, 0)", (gone,))
    (run,) = _finished_runs(db, task, [gone + timedelta(days=1)])
    db.execute(
        "UPDATE due_work SET state = 'queued', finished_at = NULL, run_id = %s "
        "WHERE id = (SELECT due_work_id FROM runs WHERE id = %s)",
        (run, run),
    )

    async def drop() -> list[partitions.Outcome]:
        conn = await connect(db_url)
        try:
            async with conn.transaction():
                return await partitions.drop_before(conn, before=now)
        finally:
            await conn.close()

    outcomes = asyncio.run(drop())
    assert outcomes[0].partition_name == f"runs_p{_suffix(gone)}"
    assert not outcomes[0].done
    assert outcomes[0].detail is not None
    assert "not finished" in outcomes[0].detail
    assert _where(db, "runs", "id", run) == f"runs_p{_suffix(gone)}"


def test_two_schedulers_make_the_same_partitions_at_once(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    clock = FakeClock(_months(datetime.now(UTC), 40) + timedelta(days=3))

    async def both(scheds: list[Scheduler]) -> None:
        await asyncio.gather(*(s.maintain_partitions() for s in scheds))

    with_schedulers(db_url, both, clock=clock, count=3, retention_days=3650)
    first = month_start(clock.at)
    for parent in ("runs", "run_logs", "occurrences"):
        names = _partitions(db, parent)
        for n in range(3):
            assert names.count(f"{parent}_p{_suffix(_months(first, n))}") == 1
    # And again: nothing to do, nothing fails.
    with_schedulers(db_url, both, clock=clock, count=2, retention_days=3650)


def _migrate_to(url: str, last: int) -> None:
    """Apply the migrations up to `last` only, as an older release would have."""

    async def go() -> None:
        conn = await connect(url, autocommit=True, prepare=False)
        try:
            async with conn.transaction():
                await conn.execute(QUERIES["migrations_create_table"])
                for m in available()[:last]:
                    await conn.execute(m.sql)
                    await conn.execute(
                        QUERIES["migrations_record"], {"version": m.version, "name": m.name}
                    )
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture
def before_partitions(pg_server: Server) -> Any:
    name = f"pao_part_{os.getpid()}"
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=name,
    )
    with janitor:
        url = pg_server.url_for(name)
        _migrate_to(url, 19)
        yield url


def test_the_migration_moves_existing_history_with_its_keys(before_partitions: str) -> None:
    url = before_partitions
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO agents (name, token_hash, token_prefix, scopes) "
            "VALUES ('a', decode(repeat('ab', 32), 'hex'), 'pao_x', '{}')"
        )
        conn.execute(
            "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone) "
            "SELECT id, 't', 'cron', '* * * * *', 'UTC' FROM agents"
        )
        conn.execute(
            "INSERT INTO due_work (task_id, scheduled_for, run_after, reason, state, finished_at) "
            "SELECT t.id, now() - i * interval '1 day', now(), 'schedule', 'succeeded', "
            "       now() - i * interval '1 day' "
            "FROM tasks t, generate_series(1, 200) i"
        )
        conn.execute(
            "INSERT INTO runs (due_work_id, task_id, scheduled_for, queued_at, status, "
            "                  started_at, finished_at) "
            "SELECT id, task_id, scheduled_for, scheduled_for, 'succeeded', finished_at, "
            "       finished_at FROM due_work"
        )
        conn.execute("INSERT INTO run_logs (run_id, message) SELECT id, 'line' FROM runs")
        conn.execute(
            "INSERT INTO occurrences (task_id, nominal_at, decision, due_work_id, decided_at) "
            "SELECT task_id, scheduled_for, 'queued', id, scheduled_for FROM due_work"
        )
        conn.execute(
            "INSERT INTO assets (id, created_by, media_type, size, sha256, chunk_bytes, run_id) "
            "SELECT gen_random_uuid(), created_by, 'text/plain', 1, "
            "       decode(repeat('ab', 32), 'hex'), 1, (SELECT id FROM runs LIMIT 1) FROM tasks"
        )
        # One occurrence still queued at the upgrade, with its run (a v4 id, in the default).
        conn.execute(
            "WITH w AS (INSERT INTO due_work (task_id, scheduled_for, run_after, reason) "
            "    SELECT id, now(), now(), 'run_now' FROM tasks RETURNING id, task_id) "
            "INSERT INTO runs (due_work_id, task_id, scheduled_for) "
            "SELECT id, task_id, now() FROM w"
        )
        tables = ("runs", "run_logs", "occurrences", "assets")
        before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}

    assert [m.name for m in asyncio.run(migrate(url))] == [
        "version_0020.sql",
        "version_0021.sql",
        "version_0022.sql",
    ]

    with psycopg.connect(url, autocommit=True) as conn:
        for t in tables:
            assert conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() == before[t]
        # The old (v4) ids sit where their value falls, mostly in the DEFAULT partition.
        homes: dict[str, int] = dict(
            conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM runs GROUP BY 1"
            ).fetchall()
        )
        assert homes.get("runs_default", 0) >= 190
        assert sum(homes.values()) == 201
        # The decision records went to their months (a year back at most) or the default.
        months: dict[str, int] = dict(
            conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM occurrences GROUP BY 1"
            ).fetchall()
        )
        assert sum(months.values()) == 200
        assert len(months) >= 7  # 200 days: seven or eight months
        # New rows go on: a v7 run in this month's partition, ids after the moved ones.
        new_run = conn.execute(
            "INSERT INTO runs (due_work_id, task_id, scheduled_for) "
            "SELECT id, task_id, now() FROM due_work LIMIT 1 RETURNING id, tableoid::regclass::text"
        ).fetchone()
        assert new_run is not None
        assert uuid.UUID(str(new_run[0])).version == 7
        assert new_run[1] == f"runs_p{_suffix(datetime.now(UTC))}"
        log_id = conn.execute(
            "INSERT INTO run_logs (run_id, message) VALUES (%s, 'new') RETURNING id", (new_run[0],)
        ).fetchone()[0]  # type: ignore[index]
        assert log_id > max(r[0] for r in before["run_logs"])
        # The occurrence queued before the upgrade is claimed and ended with its old run,
        # which version_0021.sql named on its queue row.
        claimed = conn.execute(
            QUERIES["due_work_claim"], {"limit": 10, "worker_id": "w", "lease_seconds": 60.0}
        ).fetchall()
        assert len(claimed) == 1
        old_run = claimed[0][7]
        assert uuid.UUID(str(old_run)).version == 4
        ended = conn.execute(
            QUERIES["due_work_finish_many"],
            {
                "worker_id": "w",
                "endings": Jsonb(
                    [
                        {
                            "id": claimed[0][1],
                            "attempt": 1,
                            "state": "succeeded",
                            "steps": [],
                            "error": None,
                        }
                    ]
                ),
            },
        ).fetchall()
        assert ended == [(claimed[0][1],)]
        assert conn.execute("SELECT status FROM runs WHERE id = %s", (old_run,)).fetchone() == (
            "succeeded",
        )
        # The keys hold: a deleted occurrence takes its runs, their logs and assets along.
        (asset_run,) = conn.execute("SELECT run_id FROM assets").fetchone()  # type: ignore[misc]
        conn.execute(
            "DELETE FROM due_work WHERE id = (SELECT due_work_id FROM runs WHERE id = %s)",
            (asset_run,),
        )
        assert conn.execute("SELECT count(*) FROM assets").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM run_logs WHERE run_id = %s", (asset_run,)
        ).fetchone() == (0,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO run_logs (run_id, message) VALUES (gen_random_uuid(), 'nobody')"
            )
