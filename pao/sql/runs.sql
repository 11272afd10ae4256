-- name: run_get
-- One run, optionally only if its task belongs to `owner`.
SELECT r.* FROM runs r
JOIN tasks t ON t.id = r.task_id
WHERE r.id = %(id)s AND (%(owner)s::uuid IS NULL OR t.created_by = %(owner)s::uuid)

-- name: run_get_many
-- Several runs at once (a live stream catching up), only those whose task belongs to `owner`.
SELECT r.* FROM runs r
JOIN tasks t ON t.id = r.task_id
WHERE r.id = ANY(%(ids)s) AND (%(owner)s::uuid IS NULL OR t.created_by = %(owner)s::uuid)

-- name: run_log_list_many
-- The log lines of several runs after one position, oldest first (a live stream catching up).
SELECT * FROM run_logs
WHERE run_id = ANY(%(run_ids)s) AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s

-- name: run_get_for_update
-- One run, locked with its occurrence, for a state change (cancel). The occurrence is locked
-- first (rows are locked in the order the OF list names them), then the run, and only then
-- the run's remote steps (by the cancel): the order a remote step's complete or fail takes
-- too (remote_step_lock_waiting_work), so the two never deadlock.
SELECT r.* FROM runs r
JOIN tasks t ON t.id = r.task_id
JOIN due_work d ON d.id = r.due_work_id
WHERE r.id = %(id)s AND (%(owner)s::uuid IS NULL OR t.created_by = %(owner)s::uuid)
FOR UPDATE OF d, r

-- name: run_list
-- A page of runs, newest first, filtered; `owner` NULL lists every agent's runs. Planned for
-- each call's own filters, never prepared: a plan made once for any filters can use none of
-- them (`$x IS NULL OR ...`), and a status filter then walked the list index, 150 ms over
-- 400,000 runs where the plan for the status (a parallel scan) took 50.
SELECT r.* FROM runs r
JOIN tasks t ON t.id = r.task_id
WHERE (%(owner)s::uuid IS NULL OR t.created_by = %(owner)s::uuid)
  AND (%(task_id)s::uuid IS NULL OR r.task_id = %(task_id)s::uuid)
  AND (%(status)s::text IS NULL OR r.status = %(status)s::text)
  AND (r.queued_at, r.id) < (
      COALESCE(%(after_queued)s::timestamptz, 'infinity'),
      COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY r.queued_at DESC, r.id DESC
LIMIT %(limit)s

-- name: run_list_owned_recent
-- run_list for one owner (of any status but queued or running), among only the `scan` newest
-- runs after the cursor: a full page found there is the owner's next page, since no newer run
-- of theirs lies outside it. An agent whose runs are few among others' long history finds a
-- short page here, and run_list_owned_cost tells how to look further. The cursor is one row
-- comparison, with no OR, so that even a generic plan walks the list index from it. The
-- window is written out (pao.store.runs.OWNED_SCAN): as a parameter, PostgreSQL prices a
-- plan made once as if it read a tenth of all runs, and over a long history plans each call
-- anew instead (0.99 ms a call with 1 million runs, against 0.43 for the plan made once).
SELECT r.* FROM (
    SELECT r.* FROM runs r
    WHERE (r.queued_at, r.id) < (
        COALESCE(%(after_queued)s::timestamptz, 'infinity'),
        COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
    ORDER BY r.queued_at DESC, r.id DESC
    LIMIT 1000
) r
-- The owner is looked up run by run, not joined: a join may be hashed and then sorted,
-- reading the whole window for every page.
WHERE (SELECT t.created_by FROM tasks t WHERE t.id = r.task_id) = %(owner)s::uuid
  AND (%(status)s::text IS NULL OR r.status = %(status)s::text)
ORDER BY r.queued_at DESC, r.id DESC
LIMIT %(limit)s

-- name: run_list_owned_cost
-- After a short page from run_list_owned_recent: how many runs its window held (fewer than
-- its 1000: it held every run after the cursor, and the short page is the last) and how many
-- tasks the owner has, counted up to `tasks_cap`; both on indexes alone.
SELECT
    (SELECT count(*) FROM (
        SELECT 1 FROM runs r
        WHERE (r.queued_at, r.id) < (
            COALESCE(%(after_queued)s::timestamptz, 'infinity'),
            COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
        ORDER BY r.queued_at DESC, r.id DESC
        LIMIT 1000) w) AS window_runs,
    (SELECT count(*) FROM (
        SELECT 1 FROM tasks t WHERE t.created_by = %(owner)s::uuid LIMIT %(tasks_cap)s) o)
        AS tasks

-- name: run_list_owned
-- run_list for one owner, task by task: each of the owner's tasks gives its newest runs after
-- the cursor on the task's index and the page is the newest of those, so a page costs the
-- owner's tasks, however much history other agents have (an agent with 3 runs among another's
-- 400,000 read all 400,003 for its page, newest first, in run_list). No status filter: the
-- planner, which cannot tell how rare a status is in one task's runs, may then scan every
-- run once per task; a status is looked for by run_list.
SELECT r.* FROM tasks t
CROSS JOIN LATERAL (
    SELECT r.* FROM runs r
    WHERE r.task_id = t.id
      AND (r.queued_at, r.id) < (
          COALESCE(%(after_queued)s::timestamptz, 'infinity'),
          COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
    ORDER BY r.queued_at DESC, r.id DESC
    LIMIT %(limit)s
) r
WHERE t.created_by = %(owner)s::uuid
ORDER BY r.queued_at DESC, r.id DESC
LIMIT %(limit)s

-- name: run_list_live
-- run_list of runs queued or running, found from their occurrences on the partial claim or
-- lease index (a run is queued or running exactly when it is its occurrence's current attempt
-- and the occurrence is in that state; a running run's occurrence may also be `waiting` for a
-- remote step, listed by a second call): a page costs the work now queued or running, not a
-- walk through the history for the few runs not yet ended.
SELECT r.* FROM due_work d
JOIN runs r ON r.due_work_id = d.id AND r.attempt = d.attempt
JOIN tasks t ON t.id = r.task_id
WHERE d.state = %(work_state)s::text
  AND r.status = %(status)s::text
  AND (%(owner)s::uuid IS NULL OR t.created_by = %(owner)s::uuid)
  AND (%(task_id)s::uuid IS NULL OR d.task_id = %(task_id)s::uuid)
  AND (r.queued_at, r.id) < (
      COALESCE(%(after_queued)s::timestamptz, 'infinity'),
      COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY r.queued_at DESC, r.id DESC
LIMIT %(limit)s

-- name: run_cancel_queued
-- Cancel one run that has not started yet.
UPDATE runs
SET status = 'cancelled', finished_at = now(), error = %(reason)s
WHERE id = %(id)s AND status = 'queued'
RETURNING *

-- name: run_log_list
-- A page of a run's log lines, oldest first.
SELECT * FROM run_logs
WHERE run_id = %(run_id)s AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s

-- name: run_cancel_queued_for_work
-- Cancel the live runs of occurrences that were taken back (queued, or waiting for a remote step: no worker holds either).
UPDATE runs
SET status = 'cancelled', finished_at = now(), error = %(reason)s
WHERE due_work_id = ANY(%(due_work_ids)s) AND status IN ('queued', 'running')
RETURNING id

-- name: run_insert_retry
-- The queued next attempt of an occurrence that is tried again; its queue row names it from
-- now on, for the claim (version_0021.sql).
WITH run AS (
    INSERT INTO runs (due_work_id, task_id, attempt, scheduled_for)
    VALUES (%(due_work_id)s, %(task_id)s, %(attempt)s, %(scheduled_for)s)
    RETURNING id, due_work_id, attempt
)
UPDATE due_work d
SET run_id = run.id
FROM run
WHERE d.id = run.due_work_id AND d.attempt = run.attempt

-- name: run_end_lost
-- The attempt whose worker lost its lease ends, with the reason.
UPDATE runs
SET status = %(status)s, finished_at = now(), error = %(error)s
WHERE due_work_id = %(due_work_id)s AND attempt = %(attempt)s AND status IN ('queued', 'running')
RETURNING id, task_id, status, attempt

-- name: run_finish
-- Record how an attempt ended (called only after its due_work was finished under a lease).
UPDATE runs
SET status = %(status)s, finished_at = now(), steps = %(steps)s, error = %(error)s
WHERE id = %(id)s AND status = 'running'

-- name: run_reset
-- An attempt handed back at shutdown was not spent: its run is queued again, keeping the steps that succeeded (its checkpoints).
UPDATE runs
SET status = 'queued', started_at = NULL, worker_id = NULL, steps = %(steps)s, error = NULL
WHERE id = %(id)s AND status = 'running'

-- name: run_previous_steps
-- A later attempt resuming: the steps of the latest earlier attempt of the same occurrence that saved any.
SELECT attempt, steps FROM runs
WHERE due_work_id = %(due_work_id)s AND attempt < %(attempt)s AND steps <> '[]'::jsonb
ORDER BY attempt DESC
LIMIT 1

-- name: run_save_steps_many
-- Progress of a batch of runs: the steps so far, written only where this worker holds the attempt.
UPDATE runs r
SET steps = v.steps
FROM jsonb_to_recordset(%(progress)s::jsonb) AS v(run_id uuid, id bigint, attempt int, steps jsonb)
JOIN due_work d ON d.id = v.id
WHERE r.id = v.run_id AND d.attempt = v.attempt AND d.lease_owner = %(worker_id)s
  AND d.state = 'running'

-- name: run_log_append
-- One log line, written only while this worker holds the attempt.
INSERT INTO run_logs (run_id, level, step_id, message)
SELECT %(run_id)s, %(level)s, %(step_id)s, %(message)s
FROM due_work d
WHERE d.id = %(due_work_id)s AND d.attempt = %(attempt)s
  AND d.lease_owner = %(worker_id)s AND d.state = 'running'
RETURNING id

-- name: run_cancel_waiting
-- Cancel one run whose occurrence was waiting for a remote step (no worker holds it).
UPDATE runs
SET status = 'cancelled', finished_at = now(), error = %(reason)s
WHERE id = %(id)s AND status = 'running'
RETURNING *

-- name: run_wait
-- A run reaching a remote step stays running; its steps so far end with the waiting one.
UPDATE runs SET steps = %(steps)s WHERE id = %(id)s AND status = 'running'

-- name: run_continue
-- Its remote step succeeded: the step's record gets the outcome, and the run is queued for any worker to continue (same attempt).
UPDATE runs
SET status = 'queued', worker_id = NULL, steps = CASE
    WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(steps) e WHERE e->>'id' = %(step_id)s)
    THEN (SELECT jsonb_agg(CASE WHEN e->>'id' = %(step_id)s THEN e || %(patch)s ELSE e END
                           ORDER BY i)
          FROM jsonb_array_elements(steps) WITH ORDINALITY AS x(e, i))
    ELSE steps || jsonb_build_array(%(patch)s) END
WHERE id = %(id)s AND status = 'running'
RETURNING id

-- name: run_end_waiting
-- A waiting run ends (its remote step failed, or its wait ran out): running → failed | timed_out, the step's record patched.
UPDATE runs
SET status = %(status)s, finished_at = now(), error = %(error)s, steps = CASE
    WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(steps) e WHERE e->>'id' = %(step_id)s)
    THEN (SELECT jsonb_agg(CASE WHEN e->>'id' = %(step_id)s THEN e || %(patch)s ELSE e END
                           ORDER BY i)
          FROM jsonb_array_elements(steps) WITH ORDINALITY AS x(e, i))
    ELSE steps || jsonb_build_array(%(patch)s) END
WHERE id = %(id)s AND status = 'running'
RETURNING id, task_id, status, attempt
