-- name: idempotency_claim
-- Take a key for a new request; nothing returned when someone already holds it.
INSERT INTO idempotency_keys (agent_id, endpoint, key, request_hash)
VALUES (%(agent_id)s, %(endpoint)s, %(key)s, %(request_hash)s)
ON CONFLICT (agent_id, endpoint, key) DO NOTHING
RETURNING state

-- name: idempotency_get
-- The record behind a key that is already taken.
SELECT request_hash, state, response_status, response_body, response_headers,
       locked_until < now() AS stale,
       created_at < now() - interval '24 hours' AS expired
FROM idempotency_keys
WHERE agent_id = %(agent_id)s AND endpoint = %(endpoint)s AND key = %(key)s

-- name: idempotency_take_over_stale
-- Take over a key whose first request died mid-flight (its lock ran out).
UPDATE idempotency_keys
SET locked_until = now() + interval '60 seconds'
WHERE agent_id = %(agent_id)s AND endpoint = %(endpoint)s AND key = %(key)s
  AND state = 'in_flight' AND locked_until < now()
RETURNING state

-- name: idempotency_complete
-- Remember the response so a replay gets it again.
UPDATE idempotency_keys
SET state = 'done', response_status = %(status)s, response_body = %(body)s,
    response_headers = %(headers)s
WHERE agent_id = %(agent_id)s AND endpoint = %(endpoint)s AND key = %(key)s

-- name: idempotency_forget_expired
-- Drop a key older than a day, so it can be used afresh.
DELETE FROM idempotency_keys
WHERE agent_id = %(agent_id)s AND endpoint = %(endpoint)s AND key = %(key)s
  AND created_at < now() - interval '24 hours'

-- name: idempotency_prune
-- Forget keys older than a day, a batch at a time.
DELETE FROM idempotency_keys
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys
    WHERE created_at < %(now)s - interval '24 hours'
    LIMIT %(limit)s
))

-- name: idempotency_release
-- Forget a key whose request failed, so the client may retry with it.
DELETE FROM idempotency_keys
WHERE agent_id = %(agent_id)s AND endpoint = %(endpoint)s AND key = %(key)s
  AND state = 'in_flight'
