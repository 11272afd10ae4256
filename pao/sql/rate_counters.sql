-- name: rate_counter_sign_in
-- A request's sign-in in one round trip: the token's usable agent is always looked for, and
-- a valid token is served (counted against the agent's rate) however many failures its
-- address has: behind a proxy every client shares one address, and others' bad tokens must
-- not lock it out. Only a request without a usable token is judged by its address: refused
-- when the address is over its failed sign-ins, else counted as one more failure. A window
-- opens at a key's first hit and lasts `window` seconds; the next hit after it counts from 1.
-- Given `task_id`, the task with that id comes along for a signed-in agent (the caller checks
-- that the agent may see it): reading one task, the hottest request, then takes one round
-- trip instead of two. Agent columns are prefixed, the task's keep their names.
-- Its own transaction commits without waiting for the WAL flush (set_config in the FROM
-- below, local to this statement's transaction): a crash may forget the last few counts,
-- which only lets a client a few requests more; nothing it was answered is lost, and every
-- other transaction still commits synchronously.
WITH agent AS (
    SELECT a.id, a.name, a.token_prefix, a.scopes, a.expires_at, a.disabled, a.created_at,
           a.updated_at
    FROM agents a
    WHERE a.token_hash = %(token_hash)s
      AND a.deleted_at IS NULL
      AND NOT a.disabled
      AND (a.expires_at IS NULL OR a.expires_at > now())
), blocked AS (
    SELECT c.hits,
           ceil(extract(epoch FROM c.window_start + make_interval(secs => %(window)s)
                                   - now()))::int AS reset_seconds
    FROM rate_counters c
    WHERE NOT EXISTS (SELECT 1 FROM agent)
      AND %(failures_limit)s > 0 AND c.key = %(failures_key)s
      AND c.window_start > now() - make_interval(secs => %(window)s)
      AND c.hits >= %(failures_limit)s
), counted AS (
    INSERT INTO rate_counters AS c (key, window_start, hits)
    SELECT coalesce((SELECT 'agent:' || id FROM agent), %(failures_key)s), now(), 1
    WHERE NOT EXISTS (SELECT 1 FROM blocked)
      AND CASE WHEN EXISTS (SELECT 1 FROM agent) THEN %(rate_limited)s
               ELSE %(failures_limit)s > 0 END
    ON CONFLICT (key) DO UPDATE
    SET hits = CASE
            WHEN c.window_start > now() - make_interval(secs => %(window)s) THEN c.hits + 1
            ELSE 1
        END,
        window_start = CASE
            WHEN c.window_start > now() - make_interval(secs => %(window)s) THEN c.window_start
            ELSE now()
        END
    RETURNING c.hits,
        ceil(extract(epoch FROM c.window_start + make_interval(secs => %(window)s)
                                - now()))::int AS reset_seconds
)
SELECT b.hits AS blocked_hits, b.reset_seconds AS blocked_reset,
       a.id AS agent_id, a.name AS agent_name, a.token_prefix AS agent_token_prefix,
       a.scopes AS agent_scopes, a.expires_at AS agent_expires_at,
       a.disabled AS agent_disabled, a.created_at AS agent_created_at,
       a.updated_at AS agent_updated_at,
       n.hits, n.reset_seconds,
       t.*
FROM (SELECT set_config('synchronous_commit', 'off', true)) one
LEFT JOIN blocked b ON true
LEFT JOIN agent a ON true
LEFT JOIN counted n ON true
LEFT JOIN tasks t ON t.id = %(task_id)s AND a.id IS NOT NULL

-- name: rate_counter_prune
-- Forget counters whose window ended long ago (an address seen once leaves a row), a batch
-- at a time.
DELETE FROM rate_counters
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM rate_counters
    WHERE window_start < %(now)s - interval '1 hour'
    LIMIT %(limit)s
))

-- name: rate_counter_stream_lock
-- Serialise the stream slot claims of one agent, whichever API replica makes them, until
-- this transaction ends (the claim runs after it, so it sees every claim committed before).
SELECT pg_advisory_xact_lock(hashtextextended('pao-streams:' || %(agent_id)s::text, 0))

-- name: rate_counter_stream_claim
-- Take the first free one of an agent's `cap` live-stream slots, 'stream:<agent>:<n>', each a
-- lease its stream renews at every heartbeat (`window_start` is the lease's start and its
-- owner's proof); a slot whose lease ran out (its replica died) is free again. No row: all held.
WITH free AS (
    SELECT 'stream:' || %(agent_id)s::text || ':' || n AS key
    FROM generate_series(1, %(cap)s) AS n
    WHERE NOT EXISTS (
        SELECT 1 FROM rate_counters c
        WHERE c.key = 'stream:' || %(agent_id)s::text || ':' || n
          AND c.window_start > now() - make_interval(secs => %(lease)s)
    )
    ORDER BY n
    LIMIT 1
)
INSERT INTO rate_counters AS c (key, window_start, hits)
SELECT key, clock_timestamp(), 1 FROM free
ON CONFLICT (key) DO UPDATE SET window_start = excluded.window_start, hits = 1
RETURNING c.key, c.window_start

-- name: rate_counter_stream_renew
-- A live stream's periodic check, in one round trip: may its agent still watch the task (the
-- same token, not revoked, disabled or expired; still an admin if it opened the stream as one,
-- else still allowed to read runs and still the task's owner), and is the slot still its own?
-- The lease is renewed only when both hold; `renewed` is its new start, NULL otherwise.
WITH agent AS (
    SELECT a.id
    FROM agents a
    LEFT JOIN tasks t ON t.id = %(task_id)s
    WHERE a.id = %(agent_id)s
      AND a.token_hash = %(token_hash)s
      AND a.deleted_at IS NULL
      AND NOT a.disabled
      AND (a.expires_at IS NULL OR a.expires_at > now())
      AND CASE WHEN %(as_admin)s THEN 'admin' = ANY(a.scopes)
               ELSE 'admin' = ANY(a.scopes)
                    OR ('runs:read' = ANY(a.scopes) AND t.created_by = a.id) END
), renewed AS (
    UPDATE rate_counters c
    SET window_start = clock_timestamp()
    WHERE c.key = %(key)s AND c.window_start = %(held_since)s AND EXISTS (SELECT 1 FROM agent)
    RETURNING c.window_start
)
SELECT EXISTS (SELECT 1 FROM agent) AS allowed, (SELECT window_start FROM renewed) AS renewed

-- name: rate_counter_stream_release
-- A stream has ended: free its slot, if the slot is still its own.
DELETE FROM rate_counters WHERE key = %(key)s AND window_start = %(held_since)s
