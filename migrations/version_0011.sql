-- Indexes for the two foreign keys that housekeeping's deletes follow.
--
-- Deleting a row fires its referencing foreign keys' actions, one query per
-- deleted row: `occurrences.due_work_id` and `due_work.event_id` are both
-- ON DELETE SET NULL, and neither column had an index, so each pruned due_work
-- row read the whole decision history and each pruned event read every
-- occurrence ever queued. With 400,000 rows of history, pruning 100 of either
-- took about 3 seconds (a housekeeping batch is 1,000 rows); the time grew
-- with the history, so a busy installation's prune fell ever further behind.
--
-- Both indexes are partial: most decision records and most queued work have
-- no such reference, and rows without one never enter the index. An
-- occurrence queued by an event puts an entry in due_work_event_idx with each
-- of its row versions (due_work's updates are never HOT); others pay nothing.
CREATE INDEX occurrences_due_work_idx ON occurrences (due_work_id)
    WHERE due_work_id IS NOT NULL;
CREATE INDEX due_work_event_idx ON due_work (event_id)
    WHERE event_id IS NOT NULL;

-- Building an index reads the whole table and holds off writes to it until
-- it is done (SHARE lock): on a large installation, upgrade while the
-- scheduler and workers are stopped or quiet, as for any migration that
-- builds an index. Reads go on.
