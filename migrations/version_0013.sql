-- Events: where each came from, how far down a chain it is, and whom it may reach.
--
-- An event published through the API is hop 0; one published by a step of a run that an
-- event of hop h triggered is hop h + 1 (the scheduler fans out none past
-- PAO_EVENT_MAX_HOPS). An event reaches its publisher's own event tasks; `audience_all`
-- or `audience` (agent ids), set only with the events:broadcast scope, reach others'.
-- Events from before are hop 0 with no audience; a step's event gets its task's owner as
-- publisher (the only agent it may reach now without an audience).
ALTER TABLE events
    ADD COLUMN hop integer NOT NULL DEFAULT 0,
    ADD COLUMN audience_all boolean NOT NULL DEFAULT false,
    ADD COLUMN audience uuid[];
ALTER TABLE events
    ADD CONSTRAINT events_hop_nonnegative CHECK (hop >= 0),
    ADD CONSTRAINT events_audience_one_form CHECK (NOT (audience_all AND audience IS NOT NULL));

UPDATE events e SET published_by = t.created_by
FROM runs r JOIN tasks t ON t.id = r.task_id
WHERE e.published_by IS NULL AND e.source_run_id IS NOT NULL AND r.id = e.source_run_id;

-- The new scope.
ALTER TABLE agents DROP CONSTRAINT agents_scopes_known;
ALTER TABLE agents ADD CONSTRAINT agents_scopes_known CHECK (
    scopes <@ ARRAY[
        'tasks:read', 'tasks:write', 'runs:read', 'events:publish', 'events:broadcast', 'admin'
    ]::text[]
);

-- Two more decisions an event's occurrence may get: past the hop limit, or past the owner's
-- hourly quota. Replacing the check holds an ACCESS EXCLUSIVE lock on occurrences while its
-- rows are checked (queueing waits that long).
ALTER TABLE occurrences DROP CONSTRAINT occurrences_decision_known;
ALTER TABLE occurrences ADD CONSTRAINT occurrences_decision_known CHECK (
    decision IN (
        'queued', 'coalesced', 'skipped_paused', 'snoozed', 'missed', 'deduplicated',
        'cancelled', 'hop_limit', 'over_quota'
    )
);

-- Fan-out without an audience looks only at the publisher's active event tasks; the hourly
-- quota counts what an owner's event tasks fired (all of them, whatever their state).
CREATE INDEX tasks_event_owner_idx ON tasks (created_by, schedule_expr)
    WHERE schedule_kind = 'event' AND status = 'active';
CREATE INDEX tasks_owner_events_idx ON tasks (created_by) WHERE schedule_kind = 'event';
