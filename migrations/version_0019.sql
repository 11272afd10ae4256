-- Which tzdata release computed each task's stored next fire time.
--
-- Zones change their rules (a country drops its fall-back), and a tzdata upgrade brings
-- the new rules to pao: every fire time computed from then on follows them, but the one
-- each task has stored was computed under the old ones, and would fire by them once. The
-- scheduler recomputes a stored time whose release is older than its own, once per task
-- (the row's stamp is the condition), recording a decision when the time moves. '' (older
-- than any release): a task stored before this migration, whose release nobody recorded;
-- looked at once. A constant default: added without rewriting the table.
--
-- Compared in the "C" collation, as IANA spells its releases (2026a < 2026f < 2027a).
ALTER TABLE tasks ADD COLUMN tzdata_version text COLLATE "C" NOT NULL DEFAULT '';

-- The scheduler's look for stale stamps, every minute: active tasks with a next fire time,
-- by release, oldest first, so that a look reads only the batch it takes (nothing at all
-- when nothing is stale). Building it reads the
-- table and holds off writes to it meanwhile (see version_0011.sql).
CREATE INDEX tasks_tzdata_idx ON tasks (tzdata_version)
    WHERE status = 'active' AND next_run_at IS NOT NULL;

-- A new decision: a stored fire time the zone's new rules dropped, recomputed.
ALTER TABLE occurrences DROP CONSTRAINT occurrences_decision_known;
ALTER TABLE occurrences ADD CONSTRAINT occurrences_decision_known CHECK (
    decision IN (
        'queued', 'coalesced', 'skipped_paused', 'snoozed', 'missed', 'deduplicated',
        'cancelled', 'hop_limit', 'over_quota', 'over_budget', 'rate_limited', 'recomputed'
    )
);
