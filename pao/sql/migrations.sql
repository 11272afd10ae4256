-- name: migrations_lock
-- Serialise migration runs across processes (two pods starting together), one transaction at a
-- time: held until its commit, so that it never outlives a transaction (a transaction-mode pooler
-- gives the next one another server connection).
SELECT pg_advisory_xact_lock(7318260051)

-- name: migrations_create_table
-- The bookkeeping table; created by the runner itself before the first migration.
CREATE TABLE IF NOT EXISTS pao_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: migrations_applied
-- Versions already applied, or nothing when the table does not exist yet.
SELECT version FROM pao_migrations ORDER BY version

-- name: migrations_table_exists
-- Whether the bookkeeping table exists (without creating it).
SELECT to_regclass('pao_migrations') IS NOT NULL AS exists

-- name: migrations_record
-- Record one applied migration, in the same transaction as its SQL.
INSERT INTO pao_migrations (version, name) VALUES (%(version)s, %(name)s)
