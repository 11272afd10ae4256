-- name: asset_insert
-- The asset row of an upload whose chunks are written; its owner's usage grows with it.
INSERT INTO assets (
    id, created_by, label, filename, media_type, size, sha256, tags, status, chunk_bytes,
    run_id, task_id, step_id)
VALUES (
    %(id)s, %(created_by)s, %(label)s, %(filename)s, %(media_type)s, %(size)s, %(sha256)s,
    %(tags)s, %(status)s, %(chunk_bytes)s, %(run_id)s, %(task_id)s, %(step_id)s)
RETURNING *

-- name: asset_chunks_copy
-- An upload's chunks, streamed in binary (asset_id, seq, data) rows.
COPY asset_chunks (asset_id, seq, data) FROM STDIN (FORMAT BINARY)

-- name: asset_upload_slot
-- Take the first free one of an agent's `cap` upload slots for this transaction (the
-- upload's): a transaction-level advisory lock, let go when the upload commits or rolls
-- back or its connection dies, and seen by every API replica of the database. The scan
-- stops at the first lock it gets (no ORDER BY: a sort would try, and take, every free
-- slot). NULL: all are held.
SELECT (
    SELECT n FROM generate_series(1, %(cap)s::int) AS n
    WHERE pg_try_advisory_xact_lock(hashtextextended('pao-uploads:' || %(agent_id)s::text, n))
    LIMIT 1) AS slot

-- name: asset_get
-- One asset, only if `owner` (NULL: anyone's) owns it, or it is an input of a remote step the
-- agent `claimer` (NULL: none) holds a live claim on.
SELECT * FROM assets a
WHERE a.id = %(id)s
  AND (%(owner)s::uuid IS NULL OR a.created_by = %(owner)s::uuid OR EXISTS (
      SELECT 1 FROM remote_steps s
      WHERE s.holder_agent_id = %(claimer)s::uuid AND s.state = 'claimed'
        AND s.lease_expires_at > now() AND a.id = ANY(s.input_assets)))

-- name: asset_get_many
-- The assets among `ids` that `owner` (NULL: anyone) owns: those a step of its tasks may use.
SELECT * FROM assets
WHERE id = ANY(%(ids)s::uuid[]) AND (%(owner)s::uuid IS NULL OR created_by = %(owner)s::uuid)

-- name: asset_list_for_run
-- The assets a run made (its steps', and its remote workers' uploads), oldest first.
SELECT id, filename, media_type, size, sha256, step_id, created_at FROM assets
WHERE run_id = %(run_id)s
ORDER BY created_at, id
LIMIT %(limit)s

-- name: asset_list
-- A page of assets, newest first, filtered; `owner` NULL lists every agent's. Planned for
-- each call's own filters, never prepared (as run_list). `media_prefix` matches `audio/*`.
SELECT * FROM assets
WHERE (%(owner)s::uuid IS NULL OR created_by = %(owner)s::uuid)
  AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
  AND (%(label)s::text IS NULL OR label = %(label)s::text)
  AND (%(media_type)s::text IS NULL OR media_type = %(media_type)s::text)
  AND (%(media_prefix)s::text IS NULL OR starts_with(media_type, %(media_prefix)s::text))
  AND (%(run_id)s::uuid IS NULL OR run_id = %(run_id)s::uuid)
  AND (%(task_id)s::uuid IS NULL OR task_id = %(task_id)s::uuid)
  AND (created_at, id) < (
      COALESCE(%(after_created)s::timestamptz, 'infinity'),
      COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: asset_delete
-- Remove an asset (its chunks go with it), only if `owner` (NULL: anyone's) owns it.
DELETE FROM assets
WHERE id = %(id)s AND (%(owner)s::uuid IS NULL OR created_by = %(owner)s::uuid)
RETURNING id

-- name: asset_chunk_read
-- Bytes `offset` (from 1) to `offset + count - 1` of one chunk: substring reads only the
-- slices of an uncompressed (STORAGE EXTERNAL) value it needs.
SELECT substring(data FROM %(offset)s FOR %(count)s) AS data FROM asset_chunks
WHERE asset_id = %(asset_id)s AND seq = %(seq)s

-- name: asset_usage_get
-- The bytes an agent keeps in assets (0 before its first).
SELECT COALESCE((SELECT bytes FROM asset_usage WHERE agent_id = %(agent_id)s), 0) AS bytes

-- name: asset_run_owner
-- The owner and task of a run an uploader may attach an asset to: one it may see (`owner`
-- NULL: any), or one with a step it holds a live claim on (a remote worker's output), with
-- that step's id (the step the asset is recorded as made by).
SELECT t.created_by, r.task_id, (
    SELECT s.step_id FROM remote_steps s
    WHERE s.run_id = r.id AND s.holder_agent_id = %(caller)s AND s.state = 'claimed'
      AND s.lease_expires_at > now()
    ORDER BY s.id DESC
    LIMIT 1) AS step_id
FROM runs r
JOIN tasks t ON t.id = r.task_id
WHERE r.id = %(run_id)s
  AND (%(owner)s::uuid IS NULL OR t.created_by = %(owner)s::uuid OR EXISTS (
      SELECT 1 FROM remote_steps s
      WHERE s.run_id = r.id AND s.holder_agent_id = %(caller)s AND s.state = 'claimed'
        AND s.lease_expires_at > now()))

-- name: server_secret_ensure
-- Make the named secret unless one exists (the first replica to ask makes it).
INSERT INTO server_secrets (name, value) VALUES (%(name)s, %(value)s)
ON CONFLICT (name) DO NOTHING

-- name: server_secret_get
-- The named secret.
SELECT value FROM server_secrets WHERE name = %(name)s

-- name: asset_usage_windows
-- The bytes an agent keeps, and of those the bytes of assets created in its current day and
-- month (one deleted since no longer counts). The owner's index serves both ranges.
SELECT
    COALESCE((SELECT bytes FROM asset_usage WHERE agent_id = %(agent_id)s), 0) AS kept,
    (SELECT COALESCE(sum(size), 0) FROM assets
     WHERE created_by = %(agent_id)s AND created_at >= %(day)s AND created_at < %(day_end)s)
        AS day_added,
    (SELECT COALESCE(sum(size), 0) FROM assets
     WHERE created_by = %(agent_id)s AND created_at >= %(month)s AND created_at < %(month_end)s)
        AS month_added
