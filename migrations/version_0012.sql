-- A run's task is its occurrence's task: every statement that writes a run copies
-- `task_id` from its due_work row, and a task's deletion removes its runs through
-- due_work (ON DELETE CASCADE on both keys). The foreign key from runs to tasks
-- checked again, for every run queued, what due_work's own key had just checked:
-- one of the five checks of an enqueue, 3.4 of 43 ms for a batch of 1,000.
--
-- Dropping a constraint takes a brief ACCESS EXCLUSIVE lock on runs and tasks.
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_task_id_fkey;
