-- name: rate_counter_hit
-- Count one hit for the key; a window opens at its first hit and lasts `window` seconds,
-- after which the next hit opens a new one, counting from 1.
INSERT INTO rate_counters AS c (key, window_start, hits)
VALUES (%(key)s, now(), 1)
ON CONFLICT (key) DO UPDATE
SET hits = CASE
        WHEN c.window_start > now() - make_interval(secs => %(window)s) THEN c.hits + 1
        ELSE 1
    END,
    window_start = CASE
        WHEN c.window_start > now() - make_interval(secs => %(window)s) THEN c.window_start
        ELSE now()
    END
RETURNING hits,
    ceil(extract(epoch FROM window_start + make_interval(secs => %(window)s) - now()))::int
        AS reset_seconds

-- name: rate_counter_get
-- The key's hits in its current window; no row once that window has passed.
SELECT hits,
    ceil(extract(epoch FROM window_start + make_interval(secs => %(window)s) - now()))::int
        AS reset_seconds
FROM rate_counters
WHERE key = %(key)s AND window_start > now() - make_interval(secs => %(window)s)

-- name: rate_counter_prune
-- Forget counters whose window ended long ago (an address seen once leaves a row), a batch
-- at a time.
DELETE FROM rate_counters
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM rate_counters
    WHERE window_start < %(now)s - interval '1 hour'
    LIMIT %(limit)s
))
