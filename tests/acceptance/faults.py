"""Tools for breaking things on purpose: a TCP proxy that can go silent, and the SQL
check every fault test ends with."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

FINAL = ("succeeded", "failed", "cancelled", "timed_out")


class SilentProxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL that can stop forwarding without
    closing anything, as a network partition does: both ends keep their sockets open and
    hear nothing. Bytes already read are held, not dropped, and flow again once `restore`
    is called, as TCP would retransmit them after a partition heals."""

    def __init__(self, upstream_url: str) -> None:
        params = conninfo_to_dict(upstream_url)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        self._upstream: tuple[int, Any]
        if host.startswith("/"):
            self._upstream = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
        else:
            self._upstream = (socket.AF_INET, (host, port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = make_conninfo(upstream_url, host="127.0.0.1", port=str(self.port))
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        """Stop forwarding in both directions; every connection stays open and silent."""
        self._flowing.clear()

    def restore(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        with self._lock:
            socks, self._sockets = self._sockets, []
        for s in [self._listener, *socks]:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            family, address = self._upstream
            server = socket.socket(family, socket.SOCK_STREAM)
            try:
                server.connect(address)
            except OSError:
                client.close()
                server.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # read just before a cut: held until the restore
                if self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def silent_proxy(upstream_url: str) -> Iterator[SilentProxy]:
    proxy = SilentProxy(upstream_url)
    try:
        yield proxy
    finally:
        proxy.close()


def _rows(db: psycopg.Connection[Any], sql: str) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute(sql)
        return cur.fetchall()


def assert_work_consistent(
    db: psycopg.Connection[Any],
    *,
    expected: Mapping[Any, Collection[datetime]] | None = None,
    all_final: bool = True,
) -> None:
    """The promises, checked with SQL after a fault.

    - no occurrence is materialised twice (one `due_work` row and at most one `queued`
      decision per task and nominal time);
    - none is missing: each (task, time) in `expected` has its `due_work` row;
    - none ended twice: each occurrence has exactly one run per attempt, every attempt
      before the last ended `failed` or `timed_out` (and was retried), and an ended
      occurrence's last run ended in the same state as the occurrence;
    - nothing is left `running` past its lease, and no run is `running` unless its
      occurrence is running (or `waiting` for a remote step) at that very attempt;
    - an occurrence `waiting` has a live remote step of its run's (queued or claimed) and
      is not long past its deadline (the scheduler's sweep ends it);
    - every run is of its occurrence's task (no foreign key checks it: runs copy it);
    - with `all_final`, every occurrence has ended.
    """
    twice = _rows(
        db,
        "SELECT task_id, scheduled_for, count(*) AS n FROM due_work GROUP BY 1, 2"
        " HAVING count(*) > 1",
    )
    assert twice == [], twice
    decided_twice = _rows(
        db,
        "SELECT task_id, nominal_at, count(*) AS n FROM occurrences WHERE decision = 'queued'"
        " GROUP BY 1, 2 HAVING count(*) > 1",
    )
    assert decided_twice == [], decided_twice

    if expected is not None:
        have: dict[Any, set[datetime]] = {}
        for r in _rows(db, "SELECT task_id, scheduled_for FROM due_work"):
            have.setdefault(r["task_id"], set()).add(r["scheduled_for"])
        missing = {
            task: sorted(set(times) - have.get(task, set()))
            for task, times in expected.items()
            if set(times) - have.get(task, set())
        }
        assert missing == {}, f"{len(missing)} tasks miss occurrences: {list(missing.items())[:5]}"

    bad_attempts = _rows(
        db,
        """
        SELECT d.id, d.state, d.attempt,
               array_agg(r.attempt ORDER BY r.attempt) AS attempts,
               array_agg(r.status ORDER BY r.attempt) AS statuses
        FROM due_work d LEFT JOIN runs r ON r.due_work_id = d.id
        GROUP BY d.id
        HAVING array_agg(r.attempt ORDER BY r.attempt)
                   <> ARRAY(SELECT generate_series(1, d.attempt))
            OR bool_or(r.attempt < d.attempt AND r.status NOT IN ('failed', 'timed_out'))
            OR (d.state IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                AND NOT bool_or(r.attempt = d.attempt AND r.status = d.state))
            OR (d.state IN ('queued', 'running')
                AND NOT bool_or(r.attempt = d.attempt AND r.status = d.state))
            OR (d.state = 'waiting'
                AND NOT bool_or(r.attempt = d.attempt AND r.status = 'running'))
        """,
    )
    assert bad_attempts == [], bad_attempts

    overdue = _rows(
        db,
        "SELECT id, attempt, lease_owner, lease_expires_at FROM due_work"
        " WHERE state = 'running' AND lease_expires_at < now()",
    )
    assert overdue == [], overdue
    orphans = _rows(
        db,
        "SELECT r.id, r.attempt, d.state, d.attempt AS current FROM runs r"
        " JOIN due_work d ON d.id = r.due_work_id"
        " WHERE r.status = 'running'"
        " AND NOT (d.state IN ('running', 'waiting') AND d.attempt = r.attempt)",
    )
    assert orphans == [], orphans
    stuck = _rows(
        db,
        "SELECT d.id, d.attempt, d.wait_until FROM due_work d"
        " JOIN runs r ON r.due_work_id = d.id AND r.attempt = d.attempt"
        " WHERE d.state = 'waiting' AND (d.wait_until < now() - interval '60 seconds'"
        "  OR NOT EXISTS (SELECT 1 FROM remote_steps s WHERE s.run_id = r.id"
        "                 AND s.state IN ('queued', 'claimed')))",
    )
    assert stuck == [], stuck
    strays = _rows(
        db,
        "SELECT r.id, r.task_id, d.task_id AS occurrence_task FROM runs r"
        " JOIN due_work d ON d.id = r.due_work_id WHERE r.task_id <> d.task_id",
    )
    assert strays == [], strays

    if all_final:
        unfinished = _rows(
            db,
            "SELECT id, state, attempt FROM due_work"
            " WHERE state IN ('queued', 'running', 'waiting')",
        )
        assert unfinished == [], unfinished
