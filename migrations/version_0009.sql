-- Autovacuum thresholds for the tables every run writes: due_work, runs and
-- occurrences. Their scale factors (0006) already follow the table's size;
-- what this sets is the floor, the rows that must change before a small or
-- quiet table is analysed or vacuumed again.
--
-- The default floor of 50 rows means that a queue taking a run every few
-- seconds is analysed, and its runs vacuumed, at every autovacuum pass. Each
-- of those passes invalidates the cached plan of every statement on the table
-- in every connection (workers' claims and ends, the API's run reads and
-- enqueues), and each invalidated plan is planned again on its next use, on
-- the path of the run or request that uses it. The claim's plan does not
-- depend on fresh statistics (it walks a partial index of queued rows), and
-- HOT pruning reclaims most dead row versions of runs as pages are read. With
-- the default autovacuum_naptime of 1 minute this is a small cost; measured
-- with a 1-second naptime (the side-by-side benchmark's), a run's pickup p99
-- on an idle worker dropped by about half a millisecond.
--
-- A bulk fill or a burst still changes more than 1,000 rows and is analysed
-- within one naptime, so the claim is planned with statistics when it
-- matters. Changing these settings takes a SHARE UPDATE EXCLUSIVE lock only.
ALTER TABLE due_work SET (autovacuum_analyze_threshold = 1000);
ALTER TABLE runs SET (
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_threshold = 1000
);
ALTER TABLE occurrences SET (
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_threshold = 1000
);
