"""Deleting a referenced row never reads the referencing table whole.

A foreign key's ON DELETE action runs one query per deleted row against the
referencing table; without an index on the referencing columns each of those
is a sequential scan, so housekeeping's batches of 1,000 deletes would cost a
thousand reads of the whole history.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tests.helpers import new_agent

# Agents are disabled, never deleted: nothing ever fires this key's check.
NEVER_DELETED = {"events_published_by_fkey"}

HISTORY = 5_000


def test_every_foreign_key_has_an_index_on_its_columns(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        """
        SELECT c.conname
        FROM pg_constraint c
        WHERE c.contype = 'f'
          AND NOT EXISTS (
              SELECT 1 FROM pg_index i
              WHERE i.indrelid = c.conrelid
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey)
        ORDER BY 1
        """
    ).fetchall()
    assert {name for (name,) in rows} == NEVER_DELETED


def _scans(conn: psycopg.Connection[Any], table: str) -> tuple[int, int]:
    """Sequential and index scans of `table` so far in this transaction; of a partitioned
    table, of its partitions that hold pages (an empty month made ahead is read whole, which
    costs nothing)."""
    row = conn.execute(
        "SELECT sum(s.seq_scan)::bigint, sum(COALESCE(s.idx_scan, 0))::bigint "
        "FROM pg_stat_xact_user_tables s JOIN pg_class c ON c.oid = s.relid "
        "WHERE s.relid = %s::regclass "
        "   OR (s.relid IN (SELECT relid FROM pg_partition_tree(%s)) AND c.relpages > 0)",
        (table, table),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_pruning_work_and_events_finds_their_references_by_index(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    new_agent(db_url, ["admin"], name="owner")
    owner = db.execute("SELECT id FROM agents").fetchone()[0]  # type: ignore[index]
    task = db.execute(
        "INSERT INTO tasks (created_by, title, schedule_kind, schedule_expr, timezone) "
        "VALUES (%s, 'history', 'event', 'history', 'UTC') RETURNING id",
        (owner,),
    ).fetchone()[0]  # type: ignore[index]
    # A long finished history: each occurrence queued by an event, with its decision record.
    db.execute(
        """
        WITH e AS (
            INSERT INTO events (type, published_by, dispatched_at, received_at)
            SELECT 'history', %(owner)s, now(), now() - interval '40 days'
            FROM generate_series(1, %(n)s)
            RETURNING id, received_at
        ), w AS (
            INSERT INTO due_work (task_id, scheduled_for, run_after, reason, event_id, state,
                                  finished_at)
            SELECT %(task)s, e.received_at + row_number() OVER () * interval '1 ms',
                   e.received_at, 'event', e.id, 'succeeded', now() - interval '40 days'
            FROM e
            RETURNING id, scheduled_for
        )
        INSERT INTO occurrences (task_id, nominal_at, decision, due_work_id)
        SELECT %(task)s, w.scheduled_for, 'queued', w.id FROM w
        """,
        {"owner": owner, "task": task, "n": HISTORY},
    )
    db.execute("ANALYZE events, due_work, occurrences")

    with psycopg.connect(db_url) as conn, conn.transaction():
        # Events first: each deleted event sets its work's event_id to NULL.
        conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events LIMIT 100)")
        seq, idx = _scans(conn, "due_work")
        assert (seq, idx >= 100) == (0, True)
        # Then other work: each deleted row sets its decision record's due_work_id to NULL.
        conn.execute(
            "DELETE FROM due_work WHERE id IN "
            "(SELECT id FROM due_work WHERE event_id IS NOT NULL LIMIT 100)"
        )
        seq, idx = _scans(conn, "occurrences")
        assert (seq, idx >= 100) == (0, True)

    nulled = db.execute("SELECT count(*) FILTER (WHERE event_id IS NULL) FROM due_work").fetchone()
    assert nulled == (100,)
    orphans = db.execute("SELECT count(*) FROM occurrences WHERE due_work_id IS NULL").fetchone()
    assert orphans == (100,)
