-- name: occurrence_record_many
-- Record, for a batch (one JSON document), what became of nominal fire times not queued by
-- themselves.
INSERT INTO occurrences (task_id, nominal_at, decision, due_work_id, detail)
SELECT d.task_id, d.nominal_at, d.decision, d.due_work_id, d.detail
FROM jsonb_to_recordset(%(batch)s::jsonb)
    AS d(task_id uuid, nominal_at timestamptz, decision text, due_work_id bigint, detail text)
ON CONFLICT (task_id, nominal_at) DO NOTHING

-- name: occurrence_list
-- A task's decision records, newest first, each with the latest run of its occurrence.
SELECT o.nominal_at, o.decision, o.detail, o.decided_at,
       r.id AS run_id, r.status AS run_status
FROM occurrences o
LEFT JOIN LATERAL (
    SELECT id, status FROM runs
    WHERE due_work_id = o.due_work_id
    ORDER BY attempt DESC
    LIMIT 1
) r ON true
WHERE o.task_id = %(task_id)s
  AND (%(before)s::timestamptz IS NULL OR o.nominal_at < %(before)s::timestamptz)
ORDER BY o.nominal_at DESC
LIMIT %(limit)s

-- name: occurrence_redecide
-- Change the decision of occurrences whose queued work was taken back.
UPDATE occurrences
SET decision = %(decision)s, detail = %(detail)s, decided_at = now()
WHERE due_work_id = ANY(%(due_work_ids)s) AND decision = 'queued'

-- name: occurrence_prune
-- Forget decision records older than the retention, a batch at a time: those the monthly
-- partitions did not take with them (the DEFAULT partition's). Bounded by `nominal_at` too,
-- so only the partitions before `before` are looked at, never the kept months'.
DELETE FROM occurrences
WHERE nominal_at < %(before)s AND id = ANY(ARRAY(
    SELECT id FROM occurrences
    WHERE decided_at < %(before)s AND nominal_at < %(before)s
    LIMIT %(limit)s
))

-- name: occurrence_event_room
-- How many more occurrences events may fire this hour for each of these agents: the hourly
-- quota, less the summed peaks of the agent's live schedules, less the occurrences its event
-- tasks queued in the last hour (counted no further than the quota, so the count stays cheap).
SELECT o.owner,
       greatest(0, %(limit)s::bigint
           - (SELECT coalesce(sum(t.hourly_peak), 0) FROM tasks t
              WHERE t.created_by = o.owner AND t.status IN ('active', 'paused'))
           - (SELECT count(*) FROM (
                  SELECT 1 FROM tasks t
                  JOIN occurrences c ON c.task_id = t.id
                  WHERE t.created_by = o.owner AND t.schedule_kind = 'event'
                    AND c.nominal_at > now() - interval '1 hour' AND c.decision = 'queued'
                  LIMIT %(limit)s::bigint
              ) fired)
       )::bigint AS room
FROM unnest(%(owners)s::uuid[]) AS o(owner)
