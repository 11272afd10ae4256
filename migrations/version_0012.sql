-- runs.created_by: the owner of the run's task, kept on the run, so that an
-- agent's runs are listed newest first from an index of their own.
--
-- An agent sees only the runs of its own tasks. Listed by joining every run to
-- its task and filtering on the owner, newest first, the page of an agent with
-- few runs came only after reading through the history of every other agent:
-- 0.6 s for an empty page among 400,000 runs of others, and ever longer as
-- their history grew. With the owner on the run and runs_owner_idx, a page
-- costs a page, whoever else runs what.
--
-- The owner is written when the run is inserted (the statements that queue
-- work read it from the task they already join) and when a task changes hands
-- (its runs go with it). A run inserted without it, by a process started
-- before this migration, is given its task's owner by the trigger below; the
-- trigger's WHEN test is made without calling the function, so inserts that
-- name the owner pay nothing for it.
--
-- The owner is never changed by a claim or an end, so both updates stay HOT.
-- Filling the column rewrites every run in this migration's transaction and
-- the index build holds off writes to runs until done: on a large
-- installation, upgrade while the workers are stopped or quiet.
ALTER TABLE runs ADD COLUMN created_by uuid;

UPDATE runs r SET created_by = t.created_by FROM tasks t WHERE t.id = r.task_id;

CREATE FUNCTION runs_take_task_owner() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT t.created_by INTO NEW.created_by FROM tasks t WHERE t.id = NEW.task_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER runs_take_task_owner
    BEFORE INSERT ON runs
    FOR EACH ROW WHEN (NEW.created_by IS NULL)
    EXECUTE FUNCTION runs_take_task_owner();

ALTER TABLE runs ALTER COLUMN created_by SET NOT NULL;

CREATE INDEX runs_owner_idx ON runs (created_by, queued_at DESC, id DESC);
