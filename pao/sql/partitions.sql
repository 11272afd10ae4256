-- name: partitions_lock_timeout
-- Partition maintenance waits this long at most for a table's lock (a long read of runs),
-- then gives up until the next pass, rather than queue every other statement behind it.
SET LOCAL lock_timeout = '2s'

-- name: partitions_ensure
-- Create what is missing among the history's monthly partitions, from the month of `at` to
-- `months_ahead` months after it (pao_history_partitions_ensure, version_0020.sql).
SELECT partition_name, created, detail
FROM pao_history_partitions_ensure(%(at)s::timestamptz, %(months_ahead)s::integer)

-- name: partitions_drop
-- Drop the monthly partitions whose month ended before `before`, oldest first, with the
-- assets and remote steps of their runs (pao_history_partitions_drop, version_0020.sql).
SELECT partition_name, dropped, detail
FROM pao_history_partitions_drop(%(before)s::timestamptz)

-- name: partitions_list
-- The history's partitions with their bounds, oldest first (tests, benchmarks, operators).
SELECT p.relname::text AS parent, c.relname::text AS partition_name,
       pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname IN ('runs', 'run_logs', 'occurrences')
ORDER BY p.relname, c.relname
