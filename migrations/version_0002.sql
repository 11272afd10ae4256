-- The scheduler: misfire policy, pause bookkeeping, a decision record for
-- every occurrence, dedupe keys that outlive history pruning, and events
-- waiting to be fanned out (those published by pipeline steps).

ALTER TABLE tasks
    ADD COLUMN misfire_policy text NOT NULL DEFAULT 'coalesce',
    ADD COLUMN misfire_grace_seconds integer NOT NULL DEFAULT 300,
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN condition_state boolean;

UPDATE tasks SET paused_at = updated_at WHERE status = 'paused';

ALTER TABLE tasks
    ADD CONSTRAINT tasks_misfire_policy_known CHECK (misfire_policy IN ('coalesce', 'skip', 'all')),
    ADD CONSTRAINT tasks_misfire_grace_nonnegative CHECK (misfire_grace_seconds >= 0),
    ADD CONSTRAINT tasks_paused_at_when_paused CHECK ((status = 'paused') = (paused_at IS NOT NULL));

-- What became of each nominal fire time: the answer to "why didn't it run?".
CREATE TABLE occurrences (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id      uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    nominal_at   timestamptz NOT NULL,
    decision     text NOT NULL,
    due_work_id  bigint REFERENCES due_work (id) ON DELETE SET NULL,
    decided_at   timestamptz NOT NULL DEFAULT now(),
    detail       text,
    CONSTRAINT occurrences_once_per_time UNIQUE (task_id, nominal_at),
    CONSTRAINT occurrences_decision_known CHECK (
        decision IN (
            'queued', 'coalesced', 'skipped_paused', 'snoozed', 'missed', 'deduplicated',
            'cancelled'
        )
    )
);
CREATE INDEX occurrences_task_idx ON occurrences (task_id, nominal_at DESC);
CREATE INDEX occurrences_decided_idx ON occurrences (decided_at);

-- The last time each rendered dedupe key was seen, per task. Pruned only once
-- older than the task's window, never with run history.
CREATE TABLE dedupe_keys (
    task_id  uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    key      text NOT NULL,
    seen_at  timestamptz NOT NULL,
    PRIMARY KEY (task_id, key)
);
CREATE INDEX dedupe_keys_seen_idx ON dedupe_keys (seen_at);

ALTER TABLE events ADD COLUMN dispatched_at timestamptz;
UPDATE events SET dispatched_at = received_at;
-- The scheduler fans out what pipeline steps publish; the API dispatches its own at once.
CREATE INDEX events_pending_idx ON events (received_at) WHERE dispatched_at IS NULL;

-- Housekeeping prunes finished work by age.
CREATE INDEX due_work_finished_idx ON due_work (finished_at) WHERE finished_at IS NOT NULL;
