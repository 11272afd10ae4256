-- Steps offered to the agents that claim their task type (see migrations/version_0014.sql).
-- A step's run is live while the run has not ended, its occurrence is at the run's attempt
-- and nobody asked to cancel it: `NOT IN` the final states, so a state added later for runs
-- waiting on remote steps counts as live.

-- name: remote_step_offer
-- Offer one step of a run to its task type's claimers (with the assets its parameters name, which they may read); nothing if the type is not active or the step was offered already.
INSERT INTO remote_steps (
    run_id, step_index, step_id, task_type, parameters, idempotency_key, input_assets)
SELECT %(run_id)s, %(step_index)s, %(step_id)s, t.name, %(parameters)s, %(idempotency_key)s,
       %(input_assets)s::uuid[]
FROM task_types t
WHERE t.name = %(task_type)s AND t.is_active
ON CONFLICT (run_id, step_id) DO NOTHING
RETURNING id

-- name: remote_step_notify_offered
-- Wake the API processes' waiting claimers of this task type (sent when the offer commits).
SELECT pg_notify('pao_remote_work', %(task_type)s)

-- name: remote_step_claim
-- Claim up to `limit` of a type's steps, oldest first: queued ones and claimed ones whose lease
-- ran out (SKIP LOCKED: concurrent claimers take disjoint steps). Each claimed step gets its
-- claim's token hash (the n-th of `hashes`, by id), a lease by the database clock, and its
-- delivery count goes up. Steps whose run is no longer live are cancelled instead ('dropped').
WITH candidate AS (
    SELECT s.id
    FROM remote_steps s
    WHERE s.task_type = %(task_type)s
      AND (s.state = 'queued' OR (s.state = 'claimed' AND s.lease_expires_at <= now()))
    ORDER BY s.id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
), checked AS (
    SELECT c.id,
           (r.status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')
            AND d.state NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')
            AND d.attempt = r.attempt AND NOT d.cancel_requested) AS live
    FROM candidate c
    JOIN remote_steps s ON s.id = c.id
    JOIN runs r ON r.id = s.run_id
    JOIN due_work d ON d.id = r.due_work_id
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM checked WHERE live
), claimed AS (
    UPDATE remote_steps s
    SET state = 'claimed', deliveries = s.deliveries + 1,
        claim_token_hash = (%(hashes)s::bytea[])[n.n],
        holder_agent_id = %(agent_id)s,
        claimed_at = now(),
        lease_expires_at = now() + make_interval(secs => t.lease_seconds)
    FROM numbered n, task_types t
    WHERE s.id = n.id AND t.name = s.task_type
    RETURNING s.id, n.n, s.run_id, s.step_id, s.deliveries, s.parameters, s.idempotency_key,
              s.lease_expires_at
), dropped AS (
    UPDATE remote_steps s
    SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL
    FROM checked c
    WHERE s.id = c.id AND NOT c.live
    RETURNING s.id
)
SELECT 'claimed' AS kind, c.id, c.n, c.run_id, r.task_id, r.attempt, c.step_id, c.deliveries,
       c.parameters, c.idempotency_key, c.lease_expires_at
FROM claimed c
JOIN runs r ON r.id = c.run_id
UNION ALL
SELECT 'dropped', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM dropped
ORDER BY 1, 2

-- name: remote_step_next_lease_end
-- In how many seconds (by the database clock) the first lease among a type's claimed steps runs out: a waiting claimer may take that step then.
SELECT EXTRACT(EPOCH FROM min(lease_expires_at) - now())::float8 AS seconds
FROM remote_steps
WHERE task_type = %(task_type)s AND state = 'claimed'

-- name: remote_step_lock_waiting_work
-- Before a complete or fail locks its remote steps: the occurrences waiting for them, locked
-- with their runs, in occurrence order. The lock order is occurrence, run, remote step, as a
-- run cancel (run_get_for_update), a task cancel and the rescue of expired waits take them,
-- so a complete racing a cancel waits for it instead of deadlocking. The steps are only read
-- here (their run never changes); a step whose run is not waiting at its attempt gives no row.
SELECT s.id AS remote_step, d.id, d.task_id, d.scheduled_for, d.attempt, r.id AS run_id,
       t.max_retries, t.backoff_strategy, t.schedule_kind, t.next_run_at,
       r.steps -> -1 ->> 'id' AS step_id, r.steps -> -1 ->> 'uses' AS uses,
       t.created_by AS owner, r.steps -> -1 ->> 'cost' AS charged
FROM remote_steps s
JOIN runs r ON r.id = s.run_id
JOIN due_work d ON d.id = r.due_work_id AND d.attempt = r.attempt
JOIN tasks t ON t.id = d.task_id
WHERE s.id = ANY(%(ids)s::bigint[]) AND d.state = 'waiting'
ORDER BY d.id
FOR UPDATE OF d, r

-- name: remote_step_lock
-- Steps, locked in id order, with whether each one's lease and run are still live, for their claims' holders to act on.
SELECT s.id, s.run_id, r.task_id, r.attempt, s.step_id, s.task_type, s.state, s.deliveries,
       s.claim_token_hash, s.holder_agent_id, s.lease_expires_at,
       (s.lease_expires_at IS NOT NULL AND s.lease_expires_at > now()) AS lease_live,
       (r.status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')
        AND d.state NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')
        AND d.attempt = r.attempt AND NOT d.cancel_requested) AS run_live
FROM remote_steps s
JOIN runs r ON r.id = s.run_id
JOIN due_work d ON d.id = r.due_work_id
WHERE s.id = ANY(%(ids)s::bigint[])
ORDER BY s.id
FOR UPDATE OF s

-- name: remote_step_heartbeat
-- Extend a held step's lease by its type's lease_seconds, from now.
UPDATE remote_steps s
SET lease_expires_at = now() + make_interval(secs => t.lease_seconds)
FROM task_types t
WHERE s.id = %(id)s AND s.state = 'claimed' AND s.claim_token_hash = %(token_hash)s
  AND s.lease_expires_at > now() AND t.name = s.task_type
RETURNING s.lease_expires_at

-- name: remote_step_complete
-- Their holders completed steps (the n-th id with the n-th token hash, output and cost): each output and cost is recorded and its claim ends; a step is changed only while that claim holds it.
UPDATE remote_steps s
SET state = 'succeeded', output = v.output, cost = v.cost, finished_at = now(),
    lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(token_hashes)s::bytea[], %(outputs)s::jsonb[],
            %(costs)s::numeric[]) AS v(id, token_hash, output, cost)
WHERE s.id = v.id AND s.state = 'claimed' AND s.claim_token_hash = v.token_hash
  AND s.lease_expires_at > now()
RETURNING s.id, s.run_id, s.step_id, s.state

-- name: remote_step_continue_runs
-- The runs waiting for steps just completed (their occurrences locked by remote_step_lock_waiting_work): each step's record gets its outcome (`patch`) and the run is queued again, same attempt, for any worker to continue. One row per run, with whether its occurrence was queued.
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(runs)s::jsonb)
        AS v(run_id uuid, work_id bigint, attempt int, step_id text, patch jsonb)
), continued AS (
    UPDATE runs r
    SET status = 'queued', worker_id = NULL, steps = CASE
        WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(r.steps) e WHERE e->>'id' = v.step_id)
        THEN (SELECT jsonb_agg(CASE WHEN e->>'id' = v.step_id THEN e || v.patch ELSE e END
                               ORDER BY i)
              FROM jsonb_array_elements(r.steps) WITH ORDINALITY AS x(e, i))
        ELSE r.steps || jsonb_build_array(v.patch) END
    FROM v
    WHERE r.id = v.run_id AND r.status = 'running'
    RETURNING r.id, v.work_id, v.attempt
), queued AS (
    UPDATE due_work d
    SET state = 'queued', run_after = now(), wait_until = NULL
    FROM continued c
    WHERE d.id = c.work_id AND d.attempt = c.attempt AND d.state = 'waiting'
    RETURNING d.id
)
SELECT c.id AS run_id, EXISTS (SELECT 1 FROM queued q WHERE q.id = c.work_id) AS queued
FROM continued c

-- name: remote_step_fail
-- The holder failed the step: the error and whether a retry could help are recorded.
UPDATE remote_steps
SET state = 'failed', error = %(error)s, retryable = %(retryable)s, finished_at = now(),
    lease_expires_at = NULL
WHERE id = %(id)s AND state = 'claimed' AND claim_token_hash = %(token_hash)s
  AND lease_expires_at > now()
RETURNING id, run_id, step_id, state

-- name: remote_step_notify_ended
-- Tell the workers remote steps ended (sent when this commits), one notification each: JSON {step, run, step_id, state}.
SELECT pg_notify('pao_remote_steps', p) FROM unnest(%(payloads)s::text[]) AS p

-- name: remote_step_progress_log
-- A claimed step's progress, as a log line of its run.
INSERT INTO run_logs (run_id, level, step_id, message)
VALUES (%(run_id)s, 'info', %(step_id)s, %(message)s)
RETURNING id

-- name: remote_step_get
-- One remote step by its run and step id (the worker reads the outcome after a notification).
SELECT * FROM remote_steps WHERE run_id = %(run_id)s AND step_id = %(step_id)s

-- name: remote_step_cancel_for_run
-- Cancel a run's remote steps not yet done (the run ended or was cancelled); their holders' next call is a 409.
UPDATE remote_steps
SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL
WHERE run_id = %(run_id)s AND state IN ('queued', 'claimed')
RETURNING id

-- name: remote_step_release
-- The holder hands a claimed step back unfinished (it is shutting down): queued again at once for the next claimer, no attempt spent. Deliveries stay as they are; the next claim counts one more, so this claim id is fenced out (409) from then on, and until then its lease is gone (409 too).
UPDATE remote_steps
SET state = 'queued', lease_expires_at = NULL
WHERE id = %(id)s AND state = 'claimed' AND claim_token_hash = %(token_hash)s
  AND lease_expires_at > now()
RETURNING id, task_type

-- name: remote_step_view
-- A run's waiting step as GET /runs/{id} shows it: its state, holder (if claimed) and last progress line.
SELECT s.state, s.holder_agent_id, a.name AS holder_name, s.claimed_at, s.lease_expires_at,
       s.deliveries, p.message AS progress, p.at AS progress_at
FROM remote_steps s
LEFT JOIN agents a ON a.id = s.holder_agent_id AND s.state = 'claimed'
LEFT JOIN LATERAL (
    SELECT l.message, l.at FROM run_logs l
    WHERE l.run_id = s.run_id AND l.step_id = s.step_id
    ORDER BY l.id DESC
    LIMIT 1
) p ON true
WHERE s.run_id = %(run_id)s AND s.step_id = %(step_id)s
