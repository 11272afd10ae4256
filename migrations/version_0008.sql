-- occurrences_task_idx (task_id, nominal_at DESC) repeats the unique index
-- occurrences_once_per_time (task_id, nominal_at): a B-tree is read in either
-- direction, so a task's decision records newest first come from the unique
-- index as they are. Every queued occurrence, and every occurrence the
-- scheduler records without queueing, paid for an entry in both.
--
-- The drop takes a brief ACCESS EXCLUSIVE lock on occurrences: queueing waits
-- for it, and the drop itself is immediate.
DROP INDEX IF EXISTS occurrences_task_idx;
