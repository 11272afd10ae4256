-- Storage settings for the two hottest tables: every run updates its
-- `due_work` row and its `runs` row twice (claim, then end), so both tables
-- churn like a queue while they also keep history.
--
-- fillfactor only shapes pages written from now on; existing pages keep
-- what they have until they are rewritten (VACUUM FULL, pg_repack). Changing
-- it takes a SHARE UPDATE EXCLUSIVE lock only: workers keep claiming.

-- runs: a claim sets status/started_at/worker_id, an end sets status,
-- finished_at, steps and error. None of these columns is indexed, so both
-- updates can be HOT (no new index entries) when the new row version fits on
-- the same page. The end makes the row grow by its step results, so leave a
-- fifth of each page free (80) rather than the default 100, which makes
-- nearly every update move the row to another page and write four index
-- entries for it.
ALTER TABLE runs SET (
    fillfactor = 80,
    -- Default scale factors (20% dead, 10% changed) mean a table of 10M runs
    -- waits for 2M dead rows before a vacuum; 2%/1% keeps page space
    -- reusable by HOT pruning and the statistics current as history grows.
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.01,
    -- Runs are inserted more than they are updated once history is long:
    -- vacuum after 5% new rows too, so the visibility map (index-only scans
    -- of the history listings) and freezing keep up.
    autovacuum_vacuum_insert_scale_factor = 0.05
);

-- due_work: `state` appears in the predicates of the partial claim, lease
-- and key indexes, so claims and ends can never be HOT; they can still put
-- the new row version on the same page when there is room, which saves a
-- page extension per update and keeps a batch of claimed rows together.
-- Rows grow only by the lease owner's short name while running, so 90
-- leaves room for a few new versions per page.
ALTER TABLE due_work SET (
    fillfactor = 90,
    -- The claim walks the partial index `due_work_claim_idx`; each claimed or
    -- ended row leaves a dead entry in it until vacuum removes it, and
    -- workers skip those entries on every claim. Vacuum after 1% of the
    -- table (at least 1,000 rows) changed, not 20%, so the queue part of
    -- the index stays small however long the history is.
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
