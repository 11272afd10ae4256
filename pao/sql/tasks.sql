-- name: task_insert
-- Store a validated task with its first fire time (and the tzdata release that computed it);
-- `created_at` is the instant the schedule was checked against (an rrule without DTSTART
-- starts from it), read from the database's clock when the request began.
INSERT INTO tasks (
    created_by, title, description, schedule_kind, schedule_expr, timezone, payload,
    priority, dedupe_key, dedupe_window_seconds, max_retries, backoff_strategy,
    concurrency_key, concurrency_limit, next_run_at, misfire_policy, misfire_grace_seconds,
    created_at, updated_at, hourly_peak, budget_per_run, cost_estimate, tzdata_version
) VALUES (
    %(created_by)s, %(title)s, %(description)s, %(schedule_kind)s, %(schedule_expr)s,
    %(timezone)s, %(payload)s, %(priority)s, %(dedupe_key)s, %(dedupe_window_seconds)s,
    %(max_retries)s, %(backoff_strategy)s, %(concurrency_key)s, %(concurrency_limit)s,
    %(next_run_at)s,
    %(misfire_policy)s, %(misfire_grace_seconds)s, %(created_at)s, %(created_at)s,
    %(hourly_peak)s, %(budget_per_run)s, %(cost_estimate)s, %(tzdata_version)s
)
RETURNING *

-- name: task_get
-- One task, optionally only if `owner` created it (NULL owner: any task, for admins).
SELECT * FROM tasks
WHERE id = %(id)s AND (%(owner)s::uuid IS NULL OR created_by = %(owner)s::uuid)

-- name: task_get_for_update
-- One task, locked for a read-modify-write in this transaction.
SELECT * FROM tasks
WHERE id = %(id)s AND (%(owner)s::uuid IS NULL OR created_by = %(owner)s::uuid)
FOR UPDATE

-- name: task_list
-- A page of tasks, newest first, filtered; `owner` NULL lists every agent's tasks. Never
-- prepared, as run_list: a plan for any filters walked every agent's tasks for an agent's
-- page (124 ms among 200,000 others' tasks, where the plan for the owner took 0.06 ms).
SELECT * FROM tasks
WHERE (%(owner)s::uuid IS NULL OR created_by = %(owner)s::uuid)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(created_by)s::uuid IS NULL OR created_by = %(created_by)s::uuid)
  AND (%(schedule_kind)s::text IS NULL OR schedule_kind = %(schedule_kind)s::text)
  AND (created_at, id) < (COALESCE(%(after_created)s::timestamptz, 'infinity'),
                          COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: task_update
-- Write every changeable field of a task at once (and the tzdata release that computed its
-- next fire time) and bump its version.
UPDATE tasks
SET created_by = %(created_by)s,
    title = %(title)s,
    description = %(description)s,
    schedule_kind = %(schedule_kind)s,
    schedule_expr = %(schedule_expr)s,
    timezone = %(timezone)s,
    payload = %(payload)s,
    priority = %(priority)s,
    dedupe_key = %(dedupe_key)s,
    dedupe_window_seconds = %(dedupe_window_seconds)s,
    max_retries = %(max_retries)s,
    backoff_strategy = %(backoff_strategy)s,
    concurrency_key = %(concurrency_key)s,
    concurrency_limit = %(concurrency_limit)s,
    next_run_at = %(next_run_at)s,
    misfire_policy = %(misfire_policy)s,
    misfire_grace_seconds = %(misfire_grace_seconds)s,
    hourly_peak = %(hourly_peak)s,
    budget_per_run = %(budget_per_run)s,
    cost_estimate = %(cost_estimate)s,
    tzdata_version = %(tzdata_version)s,
    version = version + 1,
    updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: task_set_state
-- Move a task to a status with its next fire time (pause, resume, cancel, snooze), and the
-- tzdata release that computed it.
UPDATE tasks
SET status = %(status)s,
    next_run_at = %(next_run_at)s,
    tzdata_version = %(tzdata_version)s,
    paused_at = CASE WHEN %(status)s = 'paused' THEN COALESCE(paused_at, now()) END,
    version = version + 1,
    updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: task_owner_exists
-- Whether an agent that may own tasks exists (admins assigning tasks to others).
SELECT 1 AS ok FROM agents WHERE id = %(id)s AND deleted_at IS NULL

-- name: task_list_matching_event
-- Active event tasks whose pattern matches an event type (exact, or prefix ending in '*').
SELECT * FROM tasks
WHERE schedule_kind = 'event'
  AND status = 'active'
  AND (schedule_expr = %(type)s
       OR (right(schedule_expr, 1) = '*'
           AND starts_with(%(type)s, left(schedule_expr, -1))))
ORDER BY id

-- name: task_list_matching_event_of
-- task_list_matching_event among the tasks of these agents only (an event's publisher and its
-- audience), each agent's read on tasks_event_owner_idx.
SELECT * FROM tasks
WHERE created_by = ANY(%(owners)s::uuid[])
  AND schedule_kind = 'event'
  AND status = 'active'
  AND (schedule_expr = %(type)s
       OR (right(schedule_expr, 1) = '*'
           AND starts_with(%(type)s, left(schedule_expr, -1))))
ORDER BY id

-- name: task_lock_due
-- Active tasks with an occurrence before the horizon, locked for this scheduler; replicas skip them.
SELECT * FROM tasks
WHERE status = 'active' AND next_run_at <= %(horizon)s
ORDER BY next_run_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: task_advance_many
-- After materialising a batch (one JSON document): each task's next fire time, the tzdata
-- release that computed it, and `completed` when nothing is left to run.
UPDATE tasks t
SET next_run_at = a.next_run_at, status = a.status, tzdata_version = %(tzdata_version)s
FROM jsonb_to_recordset(%(batch)s::jsonb) AS a(id uuid, next_run_at timestamptz, status text)
WHERE t.id = a.id

-- name: task_get_many
-- The tasks of a claimed batch, each with its row version (see due_work_claim).
SELECT *, xmin::text AS row_version FROM tasks WHERE id = ANY(%(ids)s)

-- name: task_complete_if_done
-- Tasks with nothing more to fire and nothing queued, running or waiting are completed.
UPDATE tasks t
SET status = 'completed', updated_at = now()
WHERE t.id = ANY(%(ids)s) AND t.status = 'active' AND t.next_run_at IS NULL
  AND t.schedule_kind IN ('once', 'cron', 'rrule', 'condition')
  AND NOT EXISTS (
      SELECT 1 FROM due_work d WHERE d.task_id = t.id
        AND d.state IN ('queued', 'running', 'waiting')
  )

-- name: task_set_condition_state
-- Remember the condition guard's last value, so a restart neither repeats nor misses an edge.
UPDATE tasks SET condition_state = %(state)s WHERE id = %(id)s

-- name: task_owner_load
-- An agent's live (active or paused) tasks and the sum of their hourly peaks, other than
-- `exclude`; the advisory lock makes concurrent creates by one agent take turns at the quota.
WITH turn AS (
    SELECT pg_advisory_xact_lock(hashtextextended('quota/' || %(owner)s::text, 0))
)
SELECT count(t.id) AS tasks, COALESCE(sum(t.hourly_peak), 0)::bigint AS hourly
FROM turn
LEFT JOIN tasks t
  ON t.created_by = %(owner)s::uuid
 AND t.status IN ('active', 'paused')
 AND t.id IS DISTINCT FROM %(exclude)s::uuid

-- name: task_lock_stale_zones
-- Active tasks whose stored next fire time an older tzdata release computed ('' : one nobody
-- recorded), oldest release first along tasks_tzdata_idx, locked for this scheduler;
-- replicas skip them. `snoozed`: the task's latest decision is a snooze, still pending,
-- whose time is no rule's (read on occurrences_task_idx, newest first).
SELECT t.*,
       (SELECT o.decision = 'snoozed' FROM occurrences o
        WHERE o.task_id = t.id ORDER BY o.nominal_at DESC LIMIT 1) IS TRUE AS snoozed
FROM tasks t
WHERE t.status = 'active' AND t.next_run_at IS NOT NULL AND t.tzdata_version < %(version)s
ORDER BY t.tzdata_version
LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED

-- name: task_retime_many
-- After recomputing a batch (one JSON document): each task's next fire time, as computed
-- with the tzdata release `version`, which the task now records.
UPDATE tasks t SET next_run_at = a.next_run_at, tzdata_version = %(version)s
FROM jsonb_to_recordset(%(batch)s::jsonb) AS a(id uuid, next_run_at timestamptz)
WHERE t.id = a.id
