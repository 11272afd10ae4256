-- name: task_type_insert
-- Declare a task type; nothing when the name is taken (active or not).
INSERT INTO task_types (
    name, description, parameters_schema, output_schema, metadata, lease_seconds,
    cost_per_call, is_active, created_by)
VALUES (
    %(name)s, %(description)s, %(parameters_schema)s, %(output_schema)s, %(metadata)s,
    %(lease_seconds)s, %(cost_per_call)s, %(is_active)s, %(created_by)s)
ON CONFLICT (name) DO NOTHING
RETURNING *

-- name: task_type_get
-- One task type, active or not.
SELECT * FROM task_types WHERE name = %(name)s

-- name: task_type_list
-- A page of task types by name after the cursor; inactive ones only when asked for.
SELECT * FROM task_types
WHERE (%(include_inactive)s OR is_active)
  AND (%(after)s::text IS NULL OR name > %(after)s::text)
ORDER BY name
LIMIT %(limit)s

-- name: task_type_list_active
-- Every active task type, for the tool registry (a step may name only these).
SELECT * FROM task_types WHERE is_active ORDER BY name

-- name: task_type_update
-- Replace a task type's definition (its name stays); the version goes up by one.
UPDATE task_types
SET description = %(description)s,
    parameters_schema = %(parameters_schema)s,
    output_schema = %(output_schema)s,
    metadata = %(metadata)s,
    lease_seconds = %(lease_seconds)s,
    cost_per_call = %(cost_per_call)s,
    is_active = %(is_active)s,
    version = version + 1,
    updated_at = now()
WHERE name = %(name)s
RETURNING *

-- name: task_type_deactivate
-- Soft delete: the type stays (its steps' history names it), but no step may use it now.
UPDATE task_types
SET is_active = false, version = version + 1, updated_at = now()
WHERE name = %(name)s AND is_active
RETURNING *

-- name: task_type_notify_changed
-- Tell every API process that task types changed, so each loads them again before its next check.
SELECT pg_notify('pao_task_types', %(name)s)
