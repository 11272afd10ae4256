"""Typed functions over a connection, one per SQL statement; callers never see a cursor.

Each module is named for the table it mostly touches, or for its caller where a statement
spans tables:

- `agents`, `assets`, `audit`, `events`, `heartbeats`, `idempotency`, `rate_counters`,
  `spending`, `task_types`, `tasks`: their table (spending also reserves on `due_work`);
- `occurrences`: decision records (what became of each nominal fire time) and dedupe keys;
- `queue`: queueing an occurrence (its `due_work` row, first run and decision, at once);
- `work`: the workers' side of `due_work` and `runs` (claim, renew, finish, retry);
- `runs`: runs and run logs as agents and the scheduler's rescue and retention see them;
- `remote_steps`: steps offered to services outside pao, for the claim protocol;
- `run_events`, `stream_slots`: live run streams (`pg_notify`, and slots per agent);
- `clock`: the database's clock.
"""
