-- name: agent_spending_lock
-- Serialise every change to one agent's spending (admissions, step charges, remote costs) for the rest of this transaction, and read its limits; the figures are read by the next statement, whose snapshot is taken after the lock is granted.
SELECT a.id, a.budget_per_day, a.budget_per_month, a.max_runs_per_hour, a.timezone
FROM (SELECT pg_advisory_xact_lock(%(lock_space)s, hashtext(%(agent_id)s::text))) AS l
CROSS JOIN agents a
WHERE a.id = %(agent_id)s

-- name: agent_spending_state
-- An agent's figures in its current windows: what it spent this day and month, the runs it started this hour, and what its live occurrences still hold reserved.
SELECT
    (SELECT s.spent FROM agent_spending s
     WHERE s.agent_id = %(agent_id)s AND s.period = 'day' AND s.starts_at = %(day)s) AS day_spent,
    (SELECT s.spent FROM agent_spending s
     WHERE s.agent_id = %(agent_id)s AND s.period = 'month' AND s.starts_at = %(month)s)
        AS month_spent,
    (SELECT s.runs FROM agent_spending s
     WHERE s.agent_id = %(agent_id)s AND s.period = 'hour' AND s.starts_at = %(hour)s)
        AS hour_runs,
    (SELECT coalesce(sum(d.reserved), 0) FROM due_work d
     WHERE d.reserved_by = %(agent_id)s AND d.reserved > 0
       AND d.state IN ('queued', 'running', 'waiting')) AS reserved

-- name: agent_spending_add
-- Add spending (which may be negative: a remote step that cost less than declared, never below zero) and runs to an agent's windows, creating their rows as needed.
INSERT INTO agent_spending AS s (agent_id, period, starts_at, ends_at, spent, runs)
SELECT %(agent_id)s, w.period, w.starts_at, w.ends_at, greatest(w.spent, 0), w.runs
FROM unnest(%(periods)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[],
            %(spent)s::numeric[], %(runs)s::int[]) AS w(period, starts_at, ends_at, spent, runs)
ON CONFLICT (agent_id, period, starts_at) DO UPDATE
SET spent = greatest(s.spent + EXCLUDED.spent, 0), runs = s.runs + EXCLUDED.runs

-- name: agent_spending_run_cost
-- The cost charged so far to a run, and what its occurrence still holds reserved.
SELECT r.cost, d.reserved
FROM runs r
JOIN due_work d ON d.id = r.due_work_id
WHERE r.id = %(run_id)s

-- name: agent_spending_charge_run
-- Charge a step to its run (its cost adds up; a remote step's actual cost may take some back) and consume the occurrence's reservation by `used`; fenced by the lease when a worker charges.
WITH run AS (
    UPDATE runs r SET cost = greatest(coalesce(r.cost, 0) + %(cost)s, 0)
    WHERE r.id = %(run_id)s
      -- Given a worker, only while it holds the run's lease: a lost lease charges nothing.
      AND (%(worker_id)s::text IS NULL OR EXISTS (
          SELECT 1 FROM due_work h
          WHERE h.id = r.due_work_id AND h.attempt = r.attempt
            AND h.lease_owner = %(worker_id)s::text))
    RETURNING r.due_work_id, r.cost
), work AS (
    UPDATE due_work d SET reserved = greatest(d.reserved - %(used)s, 0)
    FROM run
    WHERE d.id = run.due_work_id AND %(used)s > 0
)
SELECT cost FROM run

-- name: agent_spending_reserve
-- Admitted occurrences (one JSON document: due_work id and amount) hold their estimated cost reserved against their owner's day and month budgets until they end.
UPDATE due_work d
SET reserved = v.amount, reserved_by = %(agent_id)s
FROM jsonb_to_recordset(%(batch)s::jsonb) AS v(id bigint, amount numeric)
WHERE d.id = v.id

-- name: agent_spending_run_counts
-- An agent's runs (attempts queued, by queue time) in its current day and month; what it spent is agent_spending_state's.
SELECT
    count(*) FILTER (WHERE r.queued_at >= %(day)s AND r.queued_at < %(day_end)s) AS day_runs,
    count(*) AS month_runs
FROM tasks t
JOIN runs r ON r.task_id = t.id
WHERE t.created_by = %(agent_id)s AND r.queued_at >= %(month)s AND r.queued_at < %(month_end)s

-- name: agent_spending_prune
-- Forget windows that ended before the retention, a batch at a time.
DELETE FROM agent_spending
WHERE (agent_id, period, starts_at) IN (
    SELECT agent_id, period, starts_at FROM agent_spending
    WHERE ends_at < %(before)s
    LIMIT %(limit)s
)
