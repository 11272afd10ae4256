-- Concurrency keys, enforced in the claim.
--
-- A task's `concurrency_key` allows at most `concurrency_limit` (default 1)
-- running runs among all tasks of the same agent that share the key. A
-- `concurrency_limit` without a key limits the task's own runs. The scoped
-- key and its limit are computed once here (`claim_key`, `claim_limit`) and
-- copied onto each occurrence, so the claim never joins `tasks`. Keys are
-- scoped by owner so one agent cannot hold up another agent's work.

ALTER TABLE tasks ADD COLUMN concurrency_limit integer;
ALTER TABLE tasks ADD CONSTRAINT tasks_concurrency_limit_range
    CHECK (concurrency_limit BETWEEN 1 AND 1000);
ALTER TABLE tasks ADD COLUMN claim_key text GENERATED ALWAYS AS (
    CASE
        WHEN concurrency_key IS NOT NULL THEN 'key/' || created_by::text || '/' || concurrency_key
        WHEN concurrency_limit IS NOT NULL THEN 'task/' || id::text
    END
) STORED;
ALTER TABLE tasks ADD COLUMN claim_limit integer GENERATED ALWAYS AS (
    CASE
        WHEN concurrency_key IS NOT NULL OR concurrency_limit IS NOT NULL
        THEN COALESCE(concurrency_limit, 1)
    END
) STORED;

ALTER TABLE due_work ADD COLUMN claim_key text;
ALTER TABLE due_work ADD COLUMN claim_limit integer;
ALTER TABLE due_work ADD CONSTRAINT due_work_claim_key_has_limit
    CHECK ((claim_key IS NULL) = (claim_limit IS NULL));

-- How many runs hold a key right now: counted under the key's lock by every claim.
CREATE INDEX due_work_claim_key_running_idx ON due_work (claim_key)
    WHERE state = 'running' AND claim_key IS NOT NULL;

UPDATE due_work d
SET claim_key = t.claim_key, claim_limit = t.claim_limit
FROM tasks t
WHERE t.id = d.task_id AND d.state IN ('queued', 'running') AND t.claim_key IS NOT NULL;
