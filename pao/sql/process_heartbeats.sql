-- name: heartbeat_beat
-- Record that a process is alive.
INSERT INTO process_heartbeats (process_id, kind, hostname, pid)
VALUES (%(process_id)s, %(kind)s, %(hostname)s, %(pid)s)
ON CONFLICT (process_id) DO UPDATE SET seen_at = now()

-- name: heartbeat_remove
-- A process that stops cleanly says so.
DELETE FROM process_heartbeats WHERE process_id = %(process_id)s

-- name: heartbeat_list
-- Every known process with how long ago it was seen.
SELECT process_id, kind, hostname, pid, started_at, seen_at,
       extract(epoch FROM now() - seen_at)::float8 AS age_seconds
FROM process_heartbeats
ORDER BY kind, process_id

-- name: heartbeat_prune
-- Forget processes not seen for a day.
DELETE FROM process_heartbeats WHERE seen_at < %(before)s
