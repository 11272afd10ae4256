-- Task types: pipeline steps done by services outside pao (a transcoder, a GPU box, another
-- agent). An admin declares a type with the JSON Schema of its input; a step names it in
-- `uses` like any tool, and the step is offered (a `remote_steps` row) to the agents that
-- claim work of that type over HTTP. A type is never deleted, only made inactive, so the
-- steps that used it keep their history.
CREATE TABLE task_types (
    name               text PRIMARY KEY,
    description        text NOT NULL DEFAULT '',
    parameters_schema  jsonb NOT NULL,
    output_schema      jsonb,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    lease_seconds      integer NOT NULL DEFAULT 60,
    cost_per_call      numeric,
    is_active          boolean NOT NULL DEFAULT true,
    version            integer NOT NULL DEFAULT 1,
    -- Who made it (agents are disabled, never deleted: no key to check).
    created_by         uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- Its form (lowercase letters, digits, '_', '.', '-') is checked by pao.task_types.
    CONSTRAINT task_types_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    CONSTRAINT task_types_description_length CHECK (char_length(description) <= 10000),
    CONSTRAINT task_types_parameters_schema_is_object CHECK (
        jsonb_typeof(parameters_schema) = 'object'
    ),
    CONSTRAINT task_types_output_schema_is_object CHECK (
        output_schema IS NULL OR jsonb_typeof(output_schema) = 'object'
    ),
    CONSTRAINT task_types_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT task_types_lease_range CHECK (lease_seconds BETWEEN 1 AND 3600),
    CONSTRAINT task_types_cost_nonnegative CHECK (cost_per_call IS NULL OR cost_per_call >= 0),
    CONSTRAINT task_types_version_positive CHECK (version >= 1)
);

-- One step of one run (one attempt) offered to the agents that claim its type.
--
-- queued ─claim─► claimed ─complete─► succeeded
--                    │  └──fail────► failed
--                    └─ lease expired: claimed again by the next claim (a new claim id)
-- queued | claimed ──(its run ended or was cancelled)──► cancelled
--
-- `deliveries` counts the claims; the claim id a holder gets names it, so a claim id from
-- before the last claim is told apart from a forged one (both change nothing). Only the
-- SHA-256 of the claim id is stored. `parameters` are the step's input as rendered when
-- it was offered, checked against its type's schema then.
CREATE TABLE remote_steps (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id             uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_index         integer NOT NULL,
    step_id            text NOT NULL,
    task_type          text NOT NULL REFERENCES task_types (name),
    state              text NOT NULL DEFAULT 'queued',
    parameters         jsonb NOT NULL,
    idempotency_key    text NOT NULL,
    deliveries         integer NOT NULL DEFAULT 0,
    claim_token_hash   bytea,
    holder_agent_id    uuid,
    lease_expires_at   timestamptz,
    offered_at         timestamptz NOT NULL DEFAULT now(),
    claimed_at         timestamptz,
    finished_at        timestamptz,
    output             jsonb,
    cost               numeric,
    error              text,
    retryable          boolean,
    CONSTRAINT remote_steps_one_per_step UNIQUE (run_id, step_id),
    CONSTRAINT remote_steps_state_known CHECK (
        state IN ('queued', 'claimed', 'succeeded', 'failed', 'cancelled')
    ),
    CONSTRAINT remote_steps_claimed_has_lease CHECK (
        state <> 'claimed' OR (
            claim_token_hash IS NOT NULL AND lease_expires_at IS NOT NULL
            AND holder_agent_id IS NOT NULL AND deliveries >= 1
        )
    ),
    CONSTRAINT remote_steps_token_is_sha256 CHECK (
        claim_token_hash IS NULL OR octet_length(claim_token_hash) = 32
    ),
    CONSTRAINT remote_steps_finished_when_final CHECK (
        (state IN ('queued', 'claimed')) = (finished_at IS NULL)
    ),
    CONSTRAINT remote_steps_succeeded_has_output CHECK (state <> 'succeeded' OR output IS NOT NULL),
    CONSTRAINT remote_steps_failed_has_error CHECK (state <> 'failed' OR error IS NOT NULL),
    CONSTRAINT remote_steps_cost_nonnegative CHECK (cost IS NULL OR cost >= 0),
    CONSTRAINT remote_steps_parameters_is_object CHECK (jsonb_typeof(parameters) = 'object'),
    CONSTRAINT remote_steps_step_index_nonnegative CHECK (step_index >= 0),
    CONSTRAINT remote_steps_deliveries_nonnegative CHECK (deliveries >= 0)
);
-- A claim takes a type's queued steps oldest first, and its claimed steps whose lease ran out.
CREATE INDEX remote_steps_queued_idx ON remote_steps (task_type, id) WHERE state = 'queued';
CREATE INDEX remote_steps_lease_idx ON remote_steps (task_type, lease_expires_at)
    WHERE state = 'claimed';

-- Which task types an agent's token may claim; NULL: any.
ALTER TABLE agents ADD COLUMN task_types text[];

-- The new scope: claim work of task types and report on it.
ALTER TABLE agents DROP CONSTRAINT agents_scopes_known;
ALTER TABLE agents ADD CONSTRAINT agents_scopes_known CHECK (
    scopes <@ ARRAY[
        'tasks:read', 'tasks:write', 'runs:read', 'events:publish', 'events:broadcast',
        'work:claim', 'admin'
    ]::text[]
);
