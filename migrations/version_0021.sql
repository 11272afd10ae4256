-- The queue row names the run of its current attempt, so the claim reaches that run by its
-- id, the partition key of `runs`.
--
-- Since version_0020.sql the claim found a run by (due_work_id, attempt): an index of every
-- month's partition, so PostgreSQL planned the statement anew for each claim (a plan made
-- once for any batch joined a whole month of runs by hash), and a plan made for one claim
-- weighs every month kept, about 0.15 ms for each month that holds runs. By id, one plan
-- serves every claim: each claimed row reads the one partition its run's id falls in, at
-- the cost of one index probe, however many months are kept. docs/history.md has the
-- figures.
--
-- `run_id` is set with the occurrence's first run (due_work_queue_one/many) and moves to
-- each later attempt's run (run_insert_retry); a continuation or a hand-back keeps its run.
-- Finished rows keep theirs (the run they ended with); rows finished before this migration
-- have none, and need none.
ALTER TABLE due_work ADD COLUMN run_id uuid;

UPDATE due_work d
SET run_id = r.id
FROM runs r
WHERE r.due_work_id = d.id AND r.attempt = d.attempt AND d.finished_at IS NULL;

-- Work not finished has a run to claim: a claim that found none would hold the work and
-- start nothing until its lease ran out.
ALTER TABLE due_work ADD CONSTRAINT due_work_unfinished_has_run CHECK (
    finished_at IS NOT NULL OR run_id IS NOT NULL
);
