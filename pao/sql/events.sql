-- name: event_insert
-- Store a published event; `dispatched` says whether its fan-out happens in this transaction.
INSERT INTO events (type, payload, published_by, source_run_id, dispatched_at)
VALUES (%(type)s, %(payload)s, %(published_by)s, %(source_run_id)s,
        CASE WHEN %(dispatched)s THEN now() END)
RETURNING id, type, payload, published_by, received_at

-- name: event_lock_pending
-- Events waiting for fan-out (published by pipeline steps), oldest first, for one dispatcher.
SELECT id, type, payload, published_by, received_at FROM events
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

-- name: event_insert_from_step
-- An event published by a pipeline step; a retried step with the same key publishes nothing new.
INSERT INTO events (type, payload, source_run_id, idempotency_key)
VALUES (%(type)s, %(payload)s, %(source_run_id)s, %(idempotency_key)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id

-- name: event_get_many
-- The triggering events of a claimed batch.
SELECT id, type, payload, published_by, received_at FROM events WHERE id = ANY(%(ids)s)
