-- Limits and abuse: request counters per agent and failed sign-ins per client
-- address, shared by every API replica; each task's peak fire rate for the
-- per-agent hourly quota.

-- One row per counted key ('agent:<id>', 'auth:<address>'), overwritten when
-- a new window starts. UNLOGGED: a minute's counters are worth no WAL, and a
-- crash that empties them only forgives the current window.
CREATE UNLOGGED TABLE rate_counters (
    key          text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL,
    CONSTRAINT rate_counters_hits_positive CHECK (hits >= 1)
);

-- The most occurrences the task's schedule fires in any hour (0 for event
-- tasks), summed over an agent's live tasks for its hourly quota.
ALTER TABLE tasks ADD COLUMN hourly_peak integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD CONSTRAINT tasks_hourly_peak_nonnegative CHECK (hourly_peak >= 0);
CREATE INDEX tasks_owner_live_idx ON tasks (created_by) WHERE status IN ('active', 'paused');
