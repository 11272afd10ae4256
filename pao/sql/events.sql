-- name: event_insert
-- Store a published event; `dispatched` says whether its fan-out happens in this transaction.
INSERT INTO events (
    type, payload, published_by, source_run_id, dispatched_at, hop, audience_all, audience
)
VALUES (%(type)s, %(payload)s, %(published_by)s, %(source_run_id)s,
        CASE WHEN %(dispatched)s THEN now() END, %(hop)s, %(audience_all)s, %(audience)s)
RETURNING id, type, payload, published_by, received_at, source_run_id, hop, audience_all,
          audience

-- name: event_lock_pending
-- Events waiting for fan-out (published by pipeline steps), oldest first, for one dispatcher.
SELECT id, type, payload, published_by, received_at, source_run_id, hop, audience_all, audience
FROM events
WHERE dispatched_at IS NULL
ORDER BY received_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: event_mark_dispatched
-- The event's matching tasks have been queued.
UPDATE events SET dispatched_at = now() WHERE id = ANY(%(ids)s)

-- name: event_prune
-- Forget dispatched events older than the retention, a batch at a time.
DELETE FROM events
WHERE id = ANY(ARRAY(
    SELECT id FROM events
    WHERE dispatched_at IS NOT NULL AND received_at < %(before)s
    LIMIT %(limit)s
))

-- name: event_step_origin
-- What a step publishing an event needs to know of its run: the task's owner as it is now
-- (its scopes, and whether it may still act), and the hop of the event that triggered the
-- run (null for a run no event triggered, or whose event was pruned).
SELECT a.id, a.name, a.token_prefix, a.scopes, a.expires_at, a.disabled, a.created_at,
       a.updated_at,
       (NOT a.disabled AND a.deleted_at IS NULL
        AND (a.expires_at IS NULL OR a.expires_at > now())) AS usable,
       e.hop AS trigger_hop
FROM runs r
JOIN due_work d ON d.id = r.due_work_id
JOIN tasks t ON t.id = d.task_id
JOIN agents a ON a.id = t.created_by
LEFT JOIN events e ON e.id = d.event_id AND d.reason = 'event'
WHERE r.id = %(run_id)s

-- name: event_insert_from_step
-- An event published by a pipeline step for its task's owner; a retried step with the same key
-- publishes nothing new.
INSERT INTO events (
    type, payload, source_run_id, idempotency_key, published_by, hop, audience_all, audience
)
VALUES (%(type)s, %(payload)s, %(source_run_id)s, %(idempotency_key)s, %(published_by)s,
        %(hop)s, %(audience_all)s, %(audience)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id

-- name: event_get_many
-- The triggering events of a claimed batch.
SELECT id, type, payload, published_by, received_at, source_run_id, hop, audience_all, audience
FROM events WHERE id = ANY(%(ids)s)
