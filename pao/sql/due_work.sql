-- name: due_work_cancel_queued_for_task
-- Drop a cancelled task's queued work; return what was dropped.
UPDATE due_work
SET state = 'cancelled', finished_at = now()
WHERE task_id = %(task_id)s AND state = 'queued'
RETURNING id

-- name: due_work_request_cancel_running_for_task
-- Ask the workers running a cancelled task's work to stop it.
UPDATE due_work
SET cancel_requested = true
WHERE task_id = %(task_id)s AND state = 'running'
RETURNING id

-- name: due_work_cancel_one
-- Cancel one occurrence: at once when queued, by request when running.
UPDATE due_work
SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
    finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
    cancel_requested = (state = 'running')
WHERE id = %(id)s AND state IN ('queued', 'running')
RETURNING id, state

-- name: due_work_reprioritise_queued
-- A task's new priority applies to its occurrences still waiting.
UPDATE due_work SET priority = %(priority)s
WHERE task_id = %(task_id)s AND state = 'queued'

-- name: due_work_queue_depth
-- How much work waits: all queued rows, and those already due.
SELECT count(*) AS queued,
       count(*) FILTER (WHERE run_after <= now()) AS due
FROM due_work
WHERE state = 'queued'

-- name: due_work_drop_queued_schedule
-- Take back a task's scheduled occurrences that are queued but not started (pause, snooze, new schedule).
UPDATE due_work
SET state = 'cancelled', finished_at = now()
WHERE task_id = %(task_id)s AND state = 'queued' AND reason = 'schedule'
RETURNING id, scheduled_for
