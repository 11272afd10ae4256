-- name: dedupe_key_claim
-- Note a rendered key; nothing returned when the same key was seen within the window.
INSERT INTO dedupe_keys (task_id, key, seen_at)
VALUES (%(task_id)s, %(key)s, %(seen_at)s)
ON CONFLICT (task_id, key) DO UPDATE SET seen_at = EXCLUDED.seen_at
    WHERE dedupe_keys.seen_at <= EXCLUDED.seen_at - make_interval(secs => %(window)s)
RETURNING seen_at

-- name: dedupe_key_prune
-- Forget keys older than their task's window, a batch at a time.
DELETE FROM dedupe_keys
WHERE ctid = ANY(ARRAY(
    SELECT dk.ctid FROM dedupe_keys dk
    JOIN tasks t ON t.id = dk.task_id
    WHERE dk.seen_at < %(now)s - make_interval(secs => t.dedupe_window_seconds)
    LIMIT %(limit)s
))
