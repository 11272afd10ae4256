-- name: due_work_queue_many
-- Queue a batch of occurrences (one JSON document): due_work rows, first runs and decision
-- records in one statement. Occurrences already queued are skipped and not returned. Idle
-- workers are woken when the transaction commits (one notification per transaction, however
-- many statements queue work in it), so the statement is a whole enqueue by itself.
WITH q AS (
    SELECT * FROM ROWS FROM (jsonb_to_recordset(%(batch)s::jsonb)
        AS (task_id uuid, nominal_at timestamptz, scheduled_for timestamptz, priority int,
            reason text, event_id uuid, detail text)) WITH ORDINALITY
        AS q(task_id, nominal_at, scheduled_for, priority, reason, event_id, detail, n)
), work AS (
    INSERT INTO due_work (
        task_id, scheduled_for, run_after, priority, reason, event_id, claim_key, claim_limit,
        run_id
    )
    SELECT q.task_id, q.scheduled_for, q.scheduled_for, q.priority, q.reason, q.event_id,
           t.claim_key, t.claim_limit, pao_uuid_v7()
    FROM q JOIN tasks t ON t.id = q.task_id
    ORDER BY q.n
    ON CONFLICT (task_id, scheduled_for) DO NOTHING
    RETURNING id, task_id, scheduled_for, attempt, run_id
), run AS (
    -- The run's id is made with its queue row, which names it (version_0021.sql).
    INSERT INTO runs (id, due_work_id, task_id, attempt, scheduled_for)
    SELECT run_id, id, task_id, attempt, scheduled_for FROM work
    RETURNING *
), decision AS (
    INSERT INTO occurrences (task_id, nominal_at, decision, due_work_id, detail)
    SELECT DISTINCT ON (w.id) w.task_id, q.nominal_at, 'queued', w.id, q.detail
    FROM work w JOIN q ON q.task_id = w.task_id AND q.scheduled_for = w.scheduled_for
    ORDER BY w.id, q.n
    ON CONFLICT (task_id, nominal_at) DO NOTHING
), wake AS (
    SELECT pg_notify('pao_work', '') FROM (SELECT 1 FROM work LIMIT 1) AS any_queued
)
SELECT run.* FROM run LEFT JOIN wake ON true

-- name: due_work_queue_one
-- due_work_queue_many for a single occurrence (run now, an event): the same rows, without
-- decoding a batch document, sorting or matching rows back to requests. An idle worker's
-- pickup waits on this statement, so its shorter plan is the pickup's latency. A change to
-- either statement belongs in both (tests/integration/test_queue_statements.py holds them to
-- the same rows).
WITH work AS (
    INSERT INTO due_work (
        task_id, scheduled_for, run_after, priority, reason, event_id, claim_key, claim_limit,
        run_id
    )
    SELECT t.id, %(scheduled_for)s::timestamptz, %(scheduled_for)s::timestamptz, %(priority)s::int,
           %(reason)s::text, %(event_id)s::uuid, t.claim_key, t.claim_limit, pao_uuid_v7()
    FROM tasks t
    WHERE t.id = %(task_id)s
    ON CONFLICT (task_id, scheduled_for) DO NOTHING
    RETURNING id, task_id, scheduled_for, attempt, run_id
), run AS (
    INSERT INTO runs (id, due_work_id, task_id, attempt, scheduled_for)
    SELECT run_id, id, task_id, attempt, scheduled_for FROM work
    RETURNING *
), decision AS (
    INSERT INTO occurrences (task_id, nominal_at, decision, due_work_id, detail)
    SELECT task_id, %(nominal_at)s::timestamptz, 'queued', id, %(detail)s::text FROM work
    ON CONFLICT (task_id, nominal_at) DO NOTHING
), wake AS (
    SELECT pg_notify('pao_work', '') FROM work
)
SELECT run.* FROM run LEFT JOIN wake ON true

-- name: due_work_cancel_queued_for_task
-- Drop a cancelled task's queued work and work waiting for remote steps; return what was dropped.
UPDATE due_work
SET state = 'cancelled', finished_at = now(), wait_until = NULL
WHERE task_id = %(task_id)s AND state IN ('queued', 'waiting')
RETURNING id

-- name: due_work_request_cancel_running_for_task
-- Ask the workers running a cancelled task's work to stop it.
UPDATE due_work
SET cancel_requested = true
WHERE task_id = %(task_id)s AND state = 'running'
RETURNING id

-- name: due_work_cancel_one
-- Cancel one occurrence: at once when queued or waiting for a remote step, by request when running.
UPDATE due_work
SET state = CASE WHEN state IN ('queued', 'waiting') THEN 'cancelled' ELSE state END,
    finished_at = CASE WHEN state IN ('queued', 'waiting') THEN now() ELSE finished_at END,
    wait_until = NULL,
    cancel_requested = (state = 'running')
WHERE id = %(id)s AND state IN ('queued', 'running', 'waiting')
RETURNING id, state

-- name: due_work_refresh_queued
-- A task's new priority and concurrency key apply to its occurrences still waiting.
UPDATE due_work d
SET priority = t.priority, claim_key = t.claim_key, claim_limit = t.claim_limit
FROM tasks t
WHERE t.id = d.task_id AND d.task_id = %(task_id)s AND d.state = 'queued'

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

-- name: due_work_lock_expired
-- Running work whose lease ran out (its worker died or lost the database), for one rescuer.
SELECT d.id, d.task_id, d.attempt, d.lease_owner, d.cancel_requested,
       t.max_retries, t.backoff_strategy
FROM due_work d
JOIN tasks t ON t.id = d.task_id
WHERE d.state = 'running' AND d.lease_expires_at < now()
ORDER BY d.lease_expires_at
LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED

-- name: due_work_requeue_lost
-- Give lost work another attempt later; the new attempt number fences out the old worker.
UPDATE due_work
SET state = 'queued', attempt = attempt + 1, lease_owner = NULL, lease_expires_at = NULL,
    run_after = now() + make_interval(secs => %(delay_seconds)s)
WHERE id = %(id)s AND state = 'running' AND attempt = %(attempt)s
RETURNING id, task_id, scheduled_for, attempt

-- name: due_work_finish_lost
-- End lost work for good: out of retries (failed), or asked to stop (cancelled).
UPDATE due_work
SET state = %(state)s, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND state = 'running' AND attempt = %(attempt)s

-- name: due_work_prune
-- Delete finished work older than `before`, a batch at a time: its runs and logs go with it
-- (those of the DEFAULT partitions; the monthly partitions are dropped whole before).
DELETE FROM due_work
WHERE id = ANY(ARRAY(
    SELECT id FROM due_work
    WHERE finished_at < %(before)s
    LIMIT %(limit)s
))

-- name: due_work_claim
-- The whole claim in one statement, for work under no concurrency key: lock due queued work in
-- priority order (SKIP LOCKED: concurrent workers take disjoint rows), lease it by the database
-- clock and mark its runs running. Keyed work among the first `limit` due rows is not started
-- here (a single snapshot cannot count a key's running work exactly); it comes back as 'keyed'
-- rows, for the two-statement claim below. Each started row carries its task's row version
-- (xmin changes with every update of the row), so a worker can reuse a task it already read.
WITH candidate AS (
    SELECT d.id, d.claim_key
    FROM due_work d
    WHERE d.state = 'queued' AND d.run_after <= now()
      AND (d.claim_key IS NULL
           OR (SELECT count(*) FROM due_work r
               WHERE r.state = 'running' AND r.claim_key = d.claim_key) < d.claim_limit)
    ORDER BY d.priority, d.run_after, d.id
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE due_work d
    SET state = 'running', lease_owner = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    FROM candidate c
    WHERE d.id = c.id AND c.claim_key IS NULL
    RETURNING d.id, d.task_id, d.scheduled_for, d.attempt, d.event_id, d.reason, d.run_id
), started AS (
    -- Returning the claimed columns here spares a join of two CTEs, which the planner,
    -- blind to their sizes, would do as a nested loop (a batch of 128: 16,384 comparisons).
    UPDATE runs r
    -- A continuation keeps its first start: the run's deadline counts from there.
    SET status = 'running', started_at = COALESCE(r.started_at, now()), worker_id = %(worker_id)s
    FROM claimed c
    -- By the run's id, the partition key: each row reads its own run's month, and one
    -- plan, made once, serves every claim (version_0021.sql).
    WHERE r.id = c.run_id AND r.status = 'queued'
    RETURNING c.id, c.task_id, c.scheduled_for, c.attempt, c.event_id, c.reason,
              r.id AS run_id, r.started_at,
              -- A run claimed again (handed back, or continued after a remote step) carries
              -- its checkpoints; a fresh run has none, and costs one comparison.
              CASE WHEN r.steps <> '[]'::jsonb THEN r.steps END AS saved_steps
)
SELECT 'started' AS kind, s.id, s.task_id, s.scheduled_for, s.attempt, s.event_id, s.reason,
       s.run_id, s.started_at, s.saved_steps, t.xmin::text AS task_version
FROM started s
JOIN tasks t ON t.id = s.task_id
UNION ALL
SELECT 'keyed', c.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM candidate c
WHERE c.claim_key IS NOT NULL

-- name: due_work_claim_lock
-- A claim's first half: lock due queued work in priority order (SKIP LOCKED: concurrent workers
-- take disjoint rows instead of waiting on each other). Work under a concurrency key is taken
-- only if its key looked free and this transaction holds the key's advisory lock; that lock
-- makes the second half's count exact, since any other claim of the key has committed by then.
-- Task and event ids come along so that their rows are read in the second half's round trip.
SELECT d.id, d.task_id, d.event_id
FROM due_work d
WHERE d.state = 'queued' AND d.run_after <= now()
  AND (d.claim_key IS NULL OR (
      (SELECT count(*) FROM due_work r
       WHERE r.state = 'running' AND r.claim_key = d.claim_key) < d.claim_limit
      AND pg_try_advisory_xact_lock(%(lock_space)s, hashtext(d.claim_key))))
ORDER BY d.priority, d.run_after, d.id
LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED

-- name: due_work_claim_start
-- A claim's second half, in the same transaction with a fresh snapshot: of the locked rows, keep
-- those their key still has room for, lease them by the database clock and mark their runs
-- running; the transaction commits before any step runs. Its `claimed` and `started` are
-- due_work_claim's, applied to other rows: a change to one belongs in both.
WITH candidate AS (
    SELECT d.id, d.claim_key, d.claim_limit,
           row_number() OVER (PARTITION BY d.claim_key ORDER BY d.priority, d.run_after, d.id)
               AS place
    FROM due_work d
    WHERE d.id = ANY(%(ids)s)
), fits AS (
    SELECT c.id FROM candidate c
    WHERE c.claim_key IS NULL
       OR c.place <= c.claim_limit - (SELECT count(*) FROM due_work r
                                      WHERE r.state = 'running' AND r.claim_key = c.claim_key)
), claimed AS (
    UPDATE due_work d
    SET state = 'running', lease_owner = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    FROM fits
    WHERE d.id = fits.id
    RETURNING d.id, d.task_id, d.scheduled_for, d.attempt, d.event_id, d.reason, d.run_id
), started AS (
    UPDATE runs r
    -- A continuation keeps its first start: the run's deadline counts from there.
    SET status = 'running', started_at = COALESCE(r.started_at, now()), worker_id = %(worker_id)s
    FROM claimed c
    -- By the run's id, the partition key: each row reads its own run's month, and one
    -- plan, made once, serves every claim (version_0021.sql).
    WHERE r.id = c.run_id AND r.status = 'queued'
    RETURNING c.id, c.task_id, c.scheduled_for, c.attempt, c.event_id, c.reason,
              r.id AS run_id, r.started_at,
              -- A run claimed again (handed back, or continued after a remote step) carries
              -- its checkpoints; a fresh run has none, and costs one comparison.
              CASE WHEN r.steps <> '[]'::jsonb THEN r.steps END AS saved_steps
)
SELECT * FROM started

-- name: due_work_next_due
-- When the earliest queued work falls due, and in how many seconds by the database's clock
-- (the worker's own clock may be ahead or behind), so an idle worker sleeps until exactly
-- then; work waiting for a full concurrency key does not count (a finishing holder wakes the
-- workers). The claim index is ordered by priority first: one short walk per priority (1 to
-- 9) finds each one's earliest, where a plain min() would read every queued row (2.3 ms for
-- 9,000).
SELECT min(first.at) AS at,
       extract(epoch FROM min(first.at) - clock_timestamp())::float8 AS in_seconds
FROM generate_series(1, 9) AS p(priority)
CROSS JOIN LATERAL (
    SELECT d.run_after AS at FROM due_work d
    WHERE d.state = 'queued' AND d.priority = p.priority
      AND (d.claim_key IS NULL
           OR (SELECT count(*) FROM due_work r
               WHERE r.state = 'running' AND r.claim_key = d.claim_key) < d.claim_limit)
    ORDER BY d.run_after, d.id
    LIMIT 1
) AS first

-- name: due_work_renew_leases
-- Extend this worker's leases; rows missing from the answer were lost (rescued elsewhere).
-- A lease owner is set exactly while the work runs, so, as in due_work_finish_many, no state
-- test: the rows are found by id, not among every worker's running work on the lease index.
WITH held AS (
    -- A row another transaction holds locked is skipped, not waited for: one stray lock must
    -- not hold up every other lease. It comes back still held but not renewed.
    SELECT id FROM due_work
    WHERE id = ANY(%(ids)s) AND lease_owner = %(worker_id)s
    FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE due_work d
    SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    FROM held
    WHERE d.id = held.id
    RETURNING d.id, d.attempt, d.cancel_requested
)
SELECT id, attempt, cancel_requested, true AS renewed FROM renewed
UNION ALL
SELECT d.id, d.attempt, d.cancel_requested, false AS renewed
FROM due_work d
WHERE d.id = ANY(%(ids)s) AND d.lease_owner = %(worker_id)s
  AND d.id NOT IN (SELECT id FROM renewed)

-- name: due_work_wait_for_locks_at_most
-- Bound how long the rest of this transaction waits for a row another transaction holds locked.
SELECT set_config('lock_timeout', %(timeout)s, true)

-- name: due_work_finish_many
-- End a batch of held attempts in their final states with their runs, in one statement; rows
-- this worker no longer holds (another attempt took over) are left alone and not returned.
-- Ending work under a concurrency key frees a slot of the key: idle workers are woken at commit.
WITH v AS (
    -- One JSON document rather than six arrays: far cheaper to send from Python.
    SELECT * FROM jsonb_to_recordset(%(endings)s::jsonb)
        AS v(id bigint, attempt int, state text, steps jsonb, error text)
), done AS (
    -- The rows are found by id, on the primary key: the cost follows the batch. A lease owner
    -- is set exactly while the work runs (due_work_running_has_lease), so the fence needs no
    -- state test; with one, the planner, which expects a handful of running rows, read every
    -- worker's running work on the lease index: with 2,560 of them, 4.3 ms for a batch of
    -- 128 instead of 1.4.
    UPDATE due_work d
    SET state = v.state, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
    FROM v
    WHERE d.id = ANY(ARRAY(SELECT id FROM v)) AND d.id = v.id AND d.attempt = v.attempt
      AND d.lease_owner = %(worker_id)s
    RETURNING d.id, d.task_id, d.claim_key, d.run_id
), ran AS (
    -- The attempt's run by its id, as in due_work_claim: each row reads its run's month.
    UPDATE runs r
    SET status = v.state, finished_at = now(), steps = v.steps, error = v.error
    FROM v
    JOIN done ON done.id = v.id
    WHERE r.id = done.run_id AND r.status = 'running'
), wake AS (
    SELECT pg_notify('pao_work', '')
    FROM (SELECT 1 FROM done WHERE claim_key IS NOT NULL LIMIT 1) AS key_freed
)
SELECT done.id FROM done LEFT JOIN wake ON true

-- name: due_work_retry
-- A failed attempt with retries left: queue the next one after the backoff (fenced like finish).
UPDATE due_work
SET state = 'queued', attempt = attempt + 1, lease_owner = NULL, lease_expires_at = NULL,
    run_after = now() + make_interval(secs => %(delay_seconds)s)
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s AND state = 'running'
RETURNING id, task_id, scheduled_for, attempt

-- name: due_work_hand_back
-- Shutting down: give held work back at once without spending its attempt (fenced).
UPDATE due_work
SET state = 'queued', run_after = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s AND state = 'running'
RETURNING id

-- name: due_work_notify
-- Wake idle workers; delivered when the queueing transaction commits.
SELECT pg_notify('pao_work', '')

-- name: due_work_running_count
-- Occurrences running now, counted on the lease index (it holds running rows only).
SELECT count(*) AS running FROM due_work WHERE state = 'running'

-- name: due_work_state_estimates
-- Rows per state as the planner estimates them: the state column's most common values and
-- their frequencies times the table's row estimate. Reads two catalog rows at any table size.
SELECT v.state, greatest(c.reltuples, 0) * v.freq AS rows
FROM pg_class c
CROSS JOIN LATERAL (
    SELECT unnest(s.most_common_vals::text::text[]) AS state,
           unnest(s.most_common_freqs) AS freq
    FROM pg_stats s
    WHERE s.schemaname = current_schema() AND s.tablename = 'due_work' AND s.attname = 'state'
) v
WHERE c.oid = 'due_work'::regclass

-- name: due_work_event_at
-- Which event, if any, already holds this task's occurrence at this instant.
SELECT event_id FROM due_work WHERE task_id = %(task_id)s AND scheduled_for = %(at)s

-- name: due_work_wait
-- A held run reached a remote step: running → waiting until `wait_until`, its lease given up so no worker holds it (fenced like finish); left running when a cancel was asked for.
WITH held AS (
    SELECT id, cancel_requested FROM due_work
    WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s
      AND state = 'running'
    FOR UPDATE
), waiting AS (
    UPDATE due_work d
    SET state = 'waiting', lease_owner = NULL, lease_expires_at = NULL,
        wait_until = now() + make_interval(secs => %(seconds)s)
    FROM held h
    WHERE d.id = h.id AND NOT h.cancel_requested
    RETURNING d.id
)
SELECT h.cancel_requested, EXISTS (SELECT 1 FROM waiting) AS waiting FROM held h

-- name: due_work_lock_waiting_expired
-- Waiting occurrences whose remote step's deadline passed, for one rescuer, with their runs and retry policies.
SELECT d.id, d.task_id, d.scheduled_for, d.attempt, r.id AS run_id,
       t.max_retries, t.backoff_strategy, t.schedule_kind, t.next_run_at,
       r.steps -> -1 ->> 'id' AS step_id, r.steps -> -1 ->> 'uses' AS uses
FROM due_work d
JOIN runs r ON r.due_work_id = d.id AND r.attempt = d.attempt
JOIN tasks t ON t.id = d.task_id
WHERE d.state = 'waiting' AND d.wait_until < now()
ORDER BY d.wait_until
LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED

-- name: due_work_continue
-- Its remote step succeeded: waiting → queued now, same attempt (a continuation: the next claim resumes its run).
UPDATE due_work
SET state = 'queued', run_after = now(), wait_until = NULL
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'waiting'
RETURNING id

-- name: due_work_retry_waiting
-- Its remote step failed (retryable) or its wait ran out, with retries left: waiting → queued, next attempt after the backoff.
UPDATE due_work
SET state = 'queued', attempt = attempt + 1, wait_until = NULL,
    run_after = now() + make_interval(secs => %(delay_seconds)s)
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'waiting'
RETURNING id, task_id, scheduled_for, attempt

-- name: due_work_end_waiting
-- Its remote step failed for good or its wait ran out with no retry left: waiting → failed | timed_out.
UPDATE due_work
SET state = %(state)s, finished_at = now(), wait_until = NULL
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'waiting'
RETURNING id

-- name: due_work_hold_lease
-- A step's writes outside the run row (the files it saves) commit only while this worker holds the attempt: the row is share-locked until commit, so a rescue waits for it, or it sees the lease lost.
SELECT id FROM due_work
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s
  AND state = 'running'
FOR SHARE
