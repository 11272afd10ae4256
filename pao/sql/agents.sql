-- name: agent_insert
-- Create an agent; the token itself is never stored, only its hash.
INSERT INTO agents (name, token_hash, token_prefix, scopes, expires_at)
VALUES (%(name)s, %(token_hash)s, %(token_prefix)s, %(scopes)s, %(expires_at)s)
RETURNING id, name, token_prefix, scopes, expires_at, disabled, created_at, updated_at, task_types,
       budget_per_day, budget_per_month, max_runs_per_hour, timezone

-- name: agent_exists_by_token_hash
-- Whether any agent (even disabled) holds this token hash; used by the bootstrap.
SELECT id FROM agents WHERE token_hash = %(token_hash)s

-- name: agent_get
-- One agent that has not been deleted.
SELECT id, name, token_prefix, scopes, expires_at, disabled, created_at, updated_at, task_types,
       budget_per_day, budget_per_month, max_runs_per_hour, timezone
FROM agents
WHERE id = %(id)s AND deleted_at IS NULL

-- name: agent_list
-- A page of agents, newest first, after the cursor position.
SELECT id, name, token_prefix, scopes, expires_at, disabled, created_at, updated_at, task_types,
       budget_per_day, budget_per_month, max_runs_per_hour, timezone
FROM agents
WHERE deleted_at IS NULL
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: agent_update
-- Change an agent's name, scopes, expiry or disabled flag (NULL keeps a field), its claimable task types, budgets, run rate or zone (each only when its set_ flag says so).
UPDATE agents
SET name = COALESCE(%(name)s, name),
    scopes = COALESCE(%(scopes)s, scopes),
    expires_at = CASE WHEN %(set_expires)s THEN %(expires_at)s ELSE expires_at END,
    disabled = COALESCE(%(disabled)s, disabled),
    task_types = CASE WHEN %(set_task_types)s THEN %(task_types)s::text[] ELSE task_types END,
    budget_per_day = CASE WHEN %(set_budget_per_day)s THEN %(budget_per_day)s::numeric
                          ELSE budget_per_day END,
    budget_per_month = CASE WHEN %(set_budget_per_month)s THEN %(budget_per_month)s::numeric
                            ELSE budget_per_month END,
    max_runs_per_hour = CASE WHEN %(set_max_runs_per_hour)s THEN %(max_runs_per_hour)s::int
                             ELSE max_runs_per_hour END,
    timezone = CASE WHEN %(set_timezone)s THEN %(timezone)s::text ELSE timezone END,
    updated_at = now()
WHERE id = %(id)s AND deleted_at IS NULL
RETURNING id, name, token_prefix, scopes, expires_at, disabled, created_at, updated_at, task_types,
       budget_per_day, budget_per_month, max_runs_per_hour, timezone

-- name: agent_delete
-- Revoke an agent for good; its row stays so its tasks and audit rows keep their owner.
UPDATE agents
SET deleted_at = now(), disabled = true, updated_at = now()
WHERE id = %(id)s AND deleted_at IS NULL
RETURNING id

-- name: agent_count_usable_admins
-- How many admins could still sign in; never let that reach zero.
SELECT count(*) AS n FROM agents
WHERE 'admin' = ANY(scopes)
  AND NOT disabled
  AND deleted_at IS NULL
  AND (expires_at IS NULL OR expires_at > now())

-- name: agent_task_types
-- The task types an agent's token may claim (NULL: any), for the claim check.
SELECT task_types FROM agents WHERE id = %(id)s

-- name: agent_limits_many
-- Which of these agents have a budget or a run rate limit, with them: admission looks only at those.
SELECT id, budget_per_day, budget_per_month, max_runs_per_hour, timezone
FROM agents
WHERE id = ANY(%(ids)s::uuid[])
  AND (budget_per_day IS NOT NULL OR budget_per_month IS NOT NULL
       OR max_runs_per_hour IS NOT NULL)

-- name: agent_limits_get
-- One agent's budgets, run rate and zone, whether or not it has any (not a deleted agent's).
SELECT id, budget_per_day, budget_per_month, max_runs_per_hour, timezone
FROM agents
WHERE id = %(id)s AND deleted_at IS NULL
