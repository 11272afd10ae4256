-- Assets: files that runs consume and produce, kept in PostgreSQL (no other store to run).
--
-- An upload is one transaction: its chunks are written first (COPY), then the asset row,
-- which the chunks' foreign key waits for until commit (DEFERRABLE). An interrupted or
-- refused upload is rolled back whole, so every asset row anyone sees is complete
-- (`status` 'ready'), and no chunk is ever left without its asset.
CREATE TABLE assets (
    id            uuid PRIMARY KEY,
    -- Whose it is: the uploader, or the owner of the run's task when `run_id` is set.
    created_by    uuid NOT NULL REFERENCES agents (id),
    label         text NOT NULL DEFAULT '',
    filename      text NOT NULL DEFAULT '',
    media_type    text NOT NULL,
    size          bigint NOT NULL,
    sha256        bytea NOT NULL,
    tags          text[] NOT NULL DEFAULT '{}',
    status        text NOT NULL DEFAULT 'ready',
    -- Every chunk but the last holds exactly this many bytes: a byte offset finds its chunk.
    chunk_bytes   integer NOT NULL,
    -- Assets made by a run go with its history (retention deletes old runs).
    run_id        uuid REFERENCES runs (id) ON DELETE CASCADE,
    task_id       uuid REFERENCES tasks (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT assets_status_known CHECK (status IN ('ready')),
    CONSTRAINT assets_size_nonnegative CHECK (size >= 0),
    CONSTRAINT assets_sha256_length CHECK (octet_length(sha256) = 32),
    CONSTRAINT assets_chunk_bytes_positive CHECK (chunk_bytes > 0),
    CONSTRAINT assets_label_length CHECK (char_length(label) <= 200),
    CONSTRAINT assets_filename_length CHECK (octet_length(filename) <= 255),
    CONSTRAINT assets_media_type_length CHECK (char_length(media_type) BETWEEN 1 AND 255),
    CONSTRAINT assets_tags_count CHECK (cardinality(tags) <= 32)
);
-- Listing: newest first per owner, and over every owner for admins.
CREATE INDEX assets_owner_list_idx ON assets (created_by, created_at DESC, id DESC);
CREATE INDEX assets_list_idx ON assets (created_at DESC, id DESC);
CREATE INDEX assets_tags_idx ON assets USING gin (tags);
CREATE INDEX assets_run_idx ON assets (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX assets_task_idx ON assets (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE asset_chunks (
    asset_id  uuid NOT NULL REFERENCES assets (id) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED,
    seq       integer NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (asset_id, seq),
    CONSTRAINT asset_chunks_seq_nonnegative CHECK (seq >= 0)
);
-- Chunks are mostly compressed media: compressing them again costs CPU for nothing, and an
-- uncompressed out-of-line value lets substring() read a range without the whole chunk.
ALTER TABLE asset_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- The bytes each agent keeps, for PAO_ASSET_QUOTA_BYTES: kept by the triggers below, so an
-- asset deleted by hand, by a cascade (its run pruned) or by the API is counted alike. An
-- upload's insert locks its owner's row until commit: two uploads cannot both take the last
-- of a quota.
CREATE TABLE asset_usage (
    agent_id  uuid PRIMARY KEY REFERENCES agents (id),
    bytes     bigint NOT NULL DEFAULT 0,
    CONSTRAINT asset_usage_bytes_nonnegative CHECK (bytes >= 0)
);

CREATE FUNCTION asset_usage_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO asset_usage AS u (agent_id, bytes)
    SELECT created_by, sum(size) FROM added GROUP BY created_by
    ON CONFLICT (agent_id) DO UPDATE SET bytes = u.bytes + EXCLUDED.bytes;
    RETURN NULL;
END $$;

CREATE FUNCTION asset_usage_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE asset_usage u SET bytes = u.bytes - g.total
    FROM (SELECT created_by, sum(size) AS total FROM removed GROUP BY created_by) g
    WHERE u.agent_id = g.created_by;
    RETURN NULL;
END $$;

CREATE TRIGGER assets_usage_insert AFTER INSERT ON assets
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION asset_usage_add();
CREATE TRIGGER assets_usage_delete AFTER DELETE ON assets
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION asset_usage_remove();

-- Secrets the API replicas share, made on first use (the asset links' key when
-- PAO_ASSET_LINK_SECRET is not set).
CREATE TABLE server_secrets (
    name        text PRIMARY KEY,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT server_secrets_value_length CHECK (octet_length(value) >= 32)
);

-- The new scopes.
ALTER TABLE agents DROP CONSTRAINT agents_scopes_known;
ALTER TABLE agents ADD CONSTRAINT agents_scopes_known CHECK (
    scopes <@ ARRAY[
        'tasks:read', 'tasks:write', 'runs:read', 'events:publish', 'events:broadcast',
        'work:claim', 'assets:read', 'assets:write', 'admin'
    ]::text[]
);
