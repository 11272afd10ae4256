-- The foundation: agents, tasks, due work, runs, events, audit log,
-- idempotency keys and process heartbeats. Every time is timestamptz; every
-- state invariant is a named CHECK so a bug fails loudly at the database.

CREATE TABLE agents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    token_hash    bytea NOT NULL,
    token_prefix  text NOT NULL,
    scopes        text[] NOT NULL,
    expires_at    timestamptz,
    disabled      boolean NOT NULL DEFAULT false,
    deleted_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agents_token_hash_unique UNIQUE (token_hash),
    CONSTRAINT agents_token_hash_is_sha256 CHECK (octet_length(token_hash) = 32),
    CONSTRAINT agents_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT agents_scopes_known CHECK (
        scopes <@ ARRAY['tasks:read', 'tasks:write', 'runs:read', 'events:publish', 'admin']::text[]
    )
);

CREATE TABLE tasks (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_by             uuid NOT NULL REFERENCES agents (id),
    title                  text NOT NULL,
    description            text NOT NULL DEFAULT '',
    schedule_kind          text NOT NULL,
    schedule_expr          text NOT NULL,
    timezone               text NOT NULL,
    payload                jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority               smallint NOT NULL DEFAULT 5,
    dedupe_key             text,
    dedupe_window_seconds  integer NOT NULL DEFAULT 0,
    max_retries            integer NOT NULL DEFAULT 3,
    backoff_strategy       text NOT NULL DEFAULT 'exponential_jitter',
    concurrency_key        text,
    status                 text NOT NULL DEFAULT 'active',
    next_run_at            timestamptz,
    version                integer NOT NULL DEFAULT 1,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tasks_title_length CHECK (char_length(title) BETWEEN 1 AND 200),
    CONSTRAINT tasks_schedule_kind_known CHECK (
        schedule_kind IN ('cron', 'rrule', 'once', 'event', 'condition')
    ),
    CONSTRAINT tasks_status_known CHECK (status IN ('active', 'paused', 'cancelled', 'completed')),
    CONSTRAINT tasks_priority_range CHECK (priority BETWEEN 1 AND 9),
    CONSTRAINT tasks_dedupe_window_nonnegative CHECK (dedupe_window_seconds >= 0),
    CONSTRAINT tasks_max_retries_range CHECK (max_retries BETWEEN 0 AND 100),
    CONSTRAINT tasks_backoff_known CHECK (
        backoff_strategy IN ('fixed', 'linear', 'exponential', 'exponential_jitter')
    ),
    CONSTRAINT tasks_payload_is_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT tasks_finished_have_no_next_run CHECK (
        status IN ('active', 'paused') OR next_run_at IS NULL
    ),
    CONSTRAINT tasks_event_has_no_next_run CHECK (schedule_kind <> 'event' OR next_run_at IS NULL),
    CONSTRAINT tasks_version_positive CHECK (version >= 1)
);

-- The scheduler's hot path: active tasks by their next fire time.
CREATE INDEX tasks_due_idx ON tasks (next_run_at)
    WHERE status = 'active' AND next_run_at IS NOT NULL;
-- Listing: newest first per owner, and for admins over all owners.
CREATE INDEX tasks_owner_list_idx ON tasks (created_by, created_at DESC, id DESC);
CREATE INDEX tasks_list_idx ON tasks (created_at DESC, id DESC);
-- Event fan-out only looks at active event tasks.
CREATE INDEX tasks_event_idx ON tasks (schedule_expr)
    WHERE schedule_kind = 'event' AND status = 'active';

CREATE TABLE events (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}'::jsonb,
    published_by  uuid REFERENCES agents (id),
    source_run_id uuid,
    -- clock_timestamp, not now(): events published in one transaction get distinct
    -- times, and an event's occurrence of a task is keyed by (task, time).
    received_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_type_length CHECK (char_length(type) BETWEEN 1 AND 200)
);
CREATE INDEX events_received_idx ON events (received_at);

-- One row per occurrence: the unit the scheduler materialises and workers claim.
CREATE TABLE due_work (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id          uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    scheduled_for    timestamptz NOT NULL,
    run_after        timestamptz NOT NULL,
    priority         smallint NOT NULL DEFAULT 5,
    state            text NOT NULL DEFAULT 'queued',
    reason           text NOT NULL,
    attempt          integer NOT NULL DEFAULT 1,
    event_id         uuid REFERENCES events (id) ON DELETE SET NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT due_work_occurrence_unique UNIQUE (task_id, scheduled_for),
    CONSTRAINT due_work_state_known CHECK (
        state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')
    ),
    CONSTRAINT due_work_reason_known CHECK (reason IN ('schedule', 'run_now', 'event', 'condition')),
    CONSTRAINT due_work_priority_range CHECK (priority BETWEEN 1 AND 9),
    CONSTRAINT due_work_attempt_positive CHECK (attempt >= 1),
    CONSTRAINT due_work_running_has_lease CHECK (
        (state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)
    ),
    CONSTRAINT due_work_finished_when_final CHECK (
        (state IN ('queued', 'running')) = (finished_at IS NULL)
    )
);

-- The claim: queued work in priority order, oldest first.
CREATE INDEX due_work_claim_idx ON due_work (priority, run_after, id) WHERE state = 'queued';
-- Lease rescue looks only at running rows.
CREATE INDEX due_work_lease_idx ON due_work (lease_expires_at) WHERE state = 'running';
CREATE INDEX due_work_task_idx ON due_work (task_id, scheduled_for DESC);

-- One row per attempt at an occurrence.
CREATE TABLE runs (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    due_work_id    bigint NOT NULL REFERENCES due_work (id) ON DELETE CASCADE,
    task_id        uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt        integer NOT NULL DEFAULT 1,
    status         text NOT NULL DEFAULT 'queued',
    scheduled_for  timestamptz NOT NULL,
    queued_at      timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    worker_id      text,
    steps          jsonb NOT NULL DEFAULT '[]'::jsonb,
    error          text,
    CONSTRAINT runs_attempt_unique UNIQUE (due_work_id, attempt),
    CONSTRAINT runs_status_known CHECK (
        status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')
    ),
    CONSTRAINT runs_attempt_positive CHECK (attempt >= 1),
    CONSTRAINT runs_finished_when_final CHECK (
        (status IN ('queued', 'running')) = (finished_at IS NULL)
    ),
    CONSTRAINT runs_started_before_finished CHECK (
        started_at IS NULL OR finished_at IS NULL OR started_at <= finished_at
    ),
    CONSTRAINT runs_steps_is_array CHECK (jsonb_typeof(steps) = 'array')
);
CREATE INDEX runs_task_idx ON runs (task_id, queued_at DESC, id DESC);
CREATE INDEX runs_list_idx ON runs (queued_at DESC, id DESC);

CREATE TABLE run_logs (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id   uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    level    text NOT NULL DEFAULT 'info',
    step_id  text,
    message  text NOT NULL,
    CONSTRAINT run_logs_level_known CHECK (level IN ('debug', 'info', 'warning', 'error'))
);
CREATE INDEX run_logs_run_idx ON run_logs (run_id, id);

-- Append-only record of every mutation: who did what to which object.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_id     uuid,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text,
    request_id   text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, id);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- Idempotency-Key records: one per (agent, endpoint, key), kept for 24 hours.
-- The response is stored byte for byte, so a replay is the first answer again.
CREATE TABLE idempotency_keys (
    agent_id         uuid NOT NULL REFERENCES agents (id),
    endpoint         text NOT NULL,
    key              text NOT NULL,
    request_hash     bytea NOT NULL,
    state            text NOT NULL DEFAULT 'in_flight',
    response_status  integer,
    response_body    text,
    response_headers jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz NOT NULL DEFAULT now() + interval '60 seconds',
    PRIMARY KEY (agent_id, endpoint, key),
    CONSTRAINT idempotency_keys_state_known CHECK (state IN ('in_flight', 'done')),
    CONSTRAINT idempotency_keys_done_has_response CHECK (
        (state = 'done') = (response_status IS NOT NULL AND response_body IS NOT NULL)
    ),
    CONSTRAINT idempotency_keys_key_length CHECK (char_length(key) BETWEEN 1 AND 255)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Liveness of the long-running processes, read by GET /health.
CREATE TABLE process_heartbeats (
    process_id  text PRIMARY KEY,
    kind        text NOT NULL,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT process_heartbeats_kind_known CHECK (kind IN ('api', 'scheduler', 'worker'))
);
