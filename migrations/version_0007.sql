-- due_work_task_idx (task_id, scheduled_for DESC) repeats the unique index of
-- due_work_occurrence_unique (task_id, scheduled_for): a B-tree is read in
-- either direction, so every lookup and "newest first" scan by task has the
-- unique index already. Each row version of due_work (queued, claimed, ended:
-- three per run, none of them HOT) paid for an entry in both.
--
-- Dropping an index takes a brief ACCESS EXCLUSIVE lock on due_work: the
-- migration waits for claims and ends in flight (each is one short statement)
-- and holds up new ones for as long as the drop itself, which is immediate.
DROP INDEX IF EXISTS due_work_task_idx;
