-- name: event_insert
-- Store a published event.
INSERT INTO events (type, payload, published_by, source_run_id)
VALUES (%(type)s, %(payload)s, %(published_by)s, %(source_run_id)s)
RETURNING id, type, payload, published_by, received_at
