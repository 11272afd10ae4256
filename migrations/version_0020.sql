-- History that stays cheap: runs, their logs and the decision records partitioned by month.
--
-- Retention used to delete old rows in batches: each batch wrote dead tuples and index
-- entries that vacuum had to find again, and a table of tens of millions of runs bloated
-- and slowed down as it was pruned. Now a month of history lives in its own partitions and
-- retention drops them whole (pao_history_partitions_drop below): no dead tuples, no bloat,
-- and the time does not grow with the month's size. docs/history.md says why it is built
-- this way and what it costs.
--
-- runs: partitioned by RANGE (id). A run's id stays its only key, so the foreign keys that
-- reference it (run_logs, remote_steps, assets) keep working: PostgreSQL lets a foreign key
-- reference a partitioned table when its unique index holds the partition key, and `id` is
-- both. New ids are UUIDv7 (pao_uuid_v7: 48 bits of milliseconds since 1970, then random),
-- so they sort by time and a month of runs is one range of ids, bounded by the smallest id
-- of the month's first millisecond (pao_uuid_v7_floor). Ids already given out are random
-- (v4): they stay what they are (clients keep them) and land where their value falls, in
-- practice the DEFAULT partition, which retention empties by row deletes as before.
--
-- run_logs: partitioned by RANGE (run_id) on the same bounds, so a run's logs live and die
-- with its month. Its foreign key is per partition: each month's logs reference that
-- month's runs (the DEFAULT partition's the DEFAULT's), which is where their runs are, as
-- the bounds are the same. Referencing the partitioned `runs` instead would make dropping
-- a month check every log line of every other month against it (PostgreSQL checks a
-- detached partition for rows still referencing it). occurrences: partitioned by RANGE
-- (nominal_at); its one unique key (task_id, nominal_at) already holds it.
--
-- Every table keeps a DEFAULT partition, so a write finds a home even when the month's
-- partition is missing (a scheduler that did not run for months, a row with a time far
-- away): a run is never failed for want of a partition.
--
-- Moving the rows is one INSERT ... SELECT per table, in this one transaction: instant on
-- an empty database, a copy of the history otherwise (tables are locked meanwhile).

-- A UUIDv7 for `at`: the time's milliseconds in the first 48 bits, version 7, then random.
CREATE FUNCTION pao_uuid_v7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- The smallest UUIDv7 of `at`'s millisecond: a partition bound no id of an earlier
-- millisecond reaches.
CREATE FUNCTION pao_uuid_v7_floor(at timestamptz) RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT encode(
        substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
            || '\x00000000000000000000'::bytea,
        'hex')::uuid
$$;

-- The range of ids a run of an occurrence queued at `queued` can have, for statements that
-- reach runs by their occurrence (the claim, the end): with it, PostgreSQL reads only the
-- partitions of those months, not every month kept. A run's id is made when it is inserted:
-- at or after its occurrence's creation (same transaction, or a later retry), and before
-- now; a day's margin each side covers a server clock stepped back or ahead. An occurrence
-- from before this migration may have runs with older (v4) ids anywhere: the whole range.
-- Written with the migration's time in it, hence the EXECUTE.
DO $$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION pao_run_id_floor(queued timestamptz) RETURNS uuid
        LANGUAGE sql STABLE PARALLEL SAFE AS $body$
            SELECT CASE WHEN queued >= %1$L::timestamptz
                        THEN pao_uuid_v7_floor(queued - interval '1 day')
                        ELSE '00000000-0000-0000-0000-000000000000'::uuid END
        $body$;
        CREATE FUNCTION pao_run_id_ceiling(queued timestamptz) RETURNS uuid
        LANGUAGE sql STABLE PARALLEL SAFE AS $body$
            SELECT CASE WHEN queued >= %1$L::timestamptz
                        THEN pao_uuid_v7_floor(now() + interval '1 day')
                        ELSE 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid END
        $body$ $f$, now());
END $$;

-- Create what is missing among the partitions of the month of `at` and the `months_ahead`
-- months after it (UTC months), for runs with run_logs (together, so a run's logs always
-- find the same range), and for occurrences. Safe with any number of schedulers: they take
-- turns under a transaction-level advisory lock, and each finds what the one before made.
-- A month whose rows already sit in a DEFAULT partition (PostgreSQL refuses to create a
-- partition that would strand them) is reported, not created: its rows stay where they are
-- and are pruned row by row, like the ids from before this migration.
CREATE FUNCTION pao_history_partitions_ensure(at timestamptz, months_ahead integer)
RETURNS TABLE (partition_name text, created boolean, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    m integer;
    lo timestamptz;
    hi timestamptz;
    suffix text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pao_history_partitions'));
    FOR m IN 0..months_ahead LOOP
        lo := date_trunc('month', at, 'UTC') + make_interval(months => m);
        hi := date_trunc('month', at, 'UTC') + make_interval(months => m + 1);
        suffix := to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass('runs_p' || suffix) IS NULL OR to_regclass('run_logs_p' || suffix) IS NULL
        THEN
            partition_name := 'runs_p' || suffix;
            BEGIN
                IF to_regclass('runs_p' || suffix) IS NULL THEN
                    -- Room on each page for a run's row to grow in place (version_0010.sql),
                    -- and the autovacuum thresholds of version_0006/0009.
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF runs FOR VALUES FROM (%L) TO (%L) '
                        'WITH (fillfactor = 20, autovacuum_vacuum_scale_factor = 0.02, '
                        'autovacuum_analyze_scale_factor = 0.01, '
                        'autovacuum_vacuum_insert_scale_factor = 0.05, '
                        'autovacuum_vacuum_threshold = 1000, autovacuum_analyze_threshold = 1000)',
                        'runs_p' || suffix, pao_uuid_v7_floor(lo), pao_uuid_v7_floor(hi));
                END IF;
                IF to_regclass('run_logs_p' || suffix) IS NULL THEN
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF run_logs FOR VALUES FROM (%L) TO (%L)',
                        'run_logs_p' || suffix, pao_uuid_v7_floor(lo), pao_uuid_v7_floor(hi));
                    -- The month's logs reference the month's runs (see the top of this file).
                    EXECUTE format(
                        'ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (run_id) '
                        'REFERENCES %I (id) ON DELETE CASCADE',
                        'run_logs_p' || suffix, 'run_logs_p' || suffix || '_run_id_fkey',
                        'runs_p' || suffix);
                END IF;
                created := true;
                detail := NULL;
            EXCEPTION WHEN check_violation OR lock_not_available OR duplicate_table THEN
                created := false;
                detail := SQLERRM;
            END;
            RETURN NEXT;
        END IF;
        IF to_regclass('occurrences_p' || suffix) IS NULL THEN
            partition_name := 'occurrences_p' || suffix;
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF occurrences FOR VALUES FROM (%L) TO (%L) '
                    'WITH (autovacuum_vacuum_threshold = 1000, autovacuum_analyze_threshold = 1000)',
                    'occurrences_p' || suffix, lo, hi);
                created := true;
                detail := NULL;
            EXCEPTION WHEN check_violation OR lock_not_available OR duplicate_table THEN
                created := false;
                detail := SQLERRM;
            END;
            RETURN NEXT;
        END IF;
    END LOOP;
END $$;

-- Drop the monthly partitions whose month ended before `before`, oldest first: runs with
-- their logs, then occurrences. A month that still holds a run whose work is not finished
-- (a long wait for a remote step) is kept, and so are the younger ones, until a later call.
-- The assets and remote steps of the month's runs go first (row deletes: few rows; an
-- asset's chunks and its owner's usage follow by their own cascade and triggers), then the
-- logs' partition, then the runs' partition is detached (PostgreSQL checks that no row
-- still references it) and dropped. Returns what it dropped, and what it could not.
CREATE FUNCTION pao_history_partitions_drop(before timestamptz)
RETURNS TABLE (partition_name text, dropped boolean, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    lo uuid;
    hi uuid;
    hashjoin text;
    mergejoin text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pao_history_partitions'));
    FOR part IN
        SELECT c.relname::text AS name, substring(c.relname FROM '\d{4}_\d{2}$') AS suffix,
               to_date(substring(c.relname FROM '\d{4}_\d{2}$'), 'YYYY_MM')::timestamp
                   AT TIME ZONE 'UTC' AS starts
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'runs'::regclass AND c.relname ~ '^runs_p\d{4}_\d{2}$'
        ORDER BY 3
    LOOP
        EXIT WHEN part.starts + interval '1 month' > before;
        partition_name := part.name;
        lo := pao_uuid_v7_floor(part.starts);
        hi := pao_uuid_v7_floor(part.starts + interval '1 month');
        -- Unfinished work, each state read from its own partial index: written as one
        -- `state IN (...)` it matched no index and read the whole queue (about 3 s over ten
        -- million finished rows).
        IF EXISTS (
            SELECT 1
            FROM (SELECT id FROM due_work WHERE state = 'queued'
                  UNION ALL SELECT id FROM due_work WHERE state = 'running'
                  UNION ALL SELECT id FROM due_work WHERE state = 'waiting') AS d
            WHERE EXISTS (SELECT 1 FROM runs r
                          WHERE r.due_work_id = d.id AND r.id >= lo AND r.id < hi))
        THEN
            dropped := false;
            detail := 'it still holds runs whose work has not finished';
            RETURN NEXT;
            EXIT;
        END IF;
        BEGIN
            DELETE FROM assets WHERE run_id >= lo AND run_id < hi;
            DELETE FROM remote_steps WHERE run_id >= lo AND run_id < hi;
            -- The month's logs go first: their foreign key references the month's runs.
            EXECUTE format('DROP TABLE IF EXISTS %I', 'run_logs_p' || part.suffix);
            -- The detach checks that no row of a table referencing `runs` (remote_steps,
            -- assets: few rows, and none of this month's now) points into the month. Left
            -- to itself the planner may hash those and read the whole month; walking them
            -- and looking each up in the month's key costs what they hold instead. Only
            -- for this statement.
            hashjoin := current_setting('enable_hashjoin');
            mergejoin := current_setting('enable_mergejoin');
            PERFORM set_config('enable_hashjoin', 'off', true);
            PERFORM set_config('enable_mergejoin', 'off', true);
            EXECUTE format('ALTER TABLE runs DETACH PARTITION %I', part.name);
            PERFORM set_config('enable_hashjoin', hashjoin, true);
            PERFORM set_config('enable_mergejoin', mergejoin, true);
            EXECUTE format('DROP TABLE %I', part.name);
            dropped := true;
            detail := NULL;
            RETURN NEXT;
        EXCEPTION WHEN foreign_key_violation OR lock_not_available THEN
            dropped := false;
            detail := SQLERRM;
            RETURN NEXT;
            EXIT;
        END;
    END LOOP;
    FOR part IN
        SELECT c.relname::text AS name,
               to_date(substring(c.relname FROM '\d{4}_\d{2}$'), 'YYYY_MM')::timestamp
                   AT TIME ZONE 'UTC' AS starts
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'occurrences'::regclass AND c.relname ~ '^occurrences_p\d{4}_\d{2}$'
        ORDER BY 2
    LOOP
        EXIT WHEN part.starts + interval '1 month' > before;
        partition_name := part.name;
        BEGIN
            EXECUTE format('DROP TABLE %I', part.name);
            dropped := true;
            detail := NULL;
        EXCEPTION WHEN lock_not_available THEN
            dropped := false;
            detail := SQLERRM;
        END;
        RETURN NEXT;
        EXIT WHEN NOT dropped;
    END LOOP;
END $$;

-- The tables as they were step aside, with the names of their indexes and keys, and the
-- foreign keys that pointed at runs go (they come back below, on the new table).
ALTER TABLE remote_steps DROP CONSTRAINT remote_steps_run_id_fkey;
ALTER TABLE assets DROP CONSTRAINT assets_run_id_fkey;
ALTER TABLE run_logs DROP CONSTRAINT run_logs_run_id_fkey;
ALTER TABLE runs RENAME TO runs_before_0020;
ALTER INDEX runs_pkey RENAME TO runs_before_0020_pkey;
ALTER INDEX runs_attempt_unique RENAME TO runs_before_0020_attempt_unique;
ALTER INDEX runs_list_idx RENAME TO runs_before_0020_list_idx;
ALTER INDEX runs_task_idx RENAME TO runs_before_0020_task_idx;
ALTER TABLE run_logs RENAME TO run_logs_before_0020;
ALTER INDEX run_logs_pkey RENAME TO run_logs_before_0020_pkey;
ALTER INDEX run_logs_run_idx RENAME TO run_logs_before_0020_run_idx;
ALTER TABLE occurrences RENAME TO occurrences_before_0020;
ALTER INDEX occurrences_pkey RENAME TO occurrences_before_0020_pkey;
ALTER INDEX occurrences_once_per_time RENAME TO occurrences_before_0020_once_per_time;
ALTER INDEX occurrences_decided_idx RENAME TO occurrences_before_0020_decided_idx;
ALTER INDEX occurrences_due_work_idx RENAME TO occurrences_before_0020_due_work_idx;

CREATE TABLE runs (
    id             uuid NOT NULL DEFAULT pao_uuid_v7(),
    due_work_id    bigint NOT NULL
        CONSTRAINT runs_due_work_id_fkey REFERENCES due_work (id) ON DELETE CASCADE,
    task_id        uuid NOT NULL,
    attempt        integer NOT NULL DEFAULT 1,
    status         text NOT NULL DEFAULT 'queued',
    scheduled_for  timestamptz NOT NULL,
    queued_at      timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    worker_id      text,
    steps          jsonb NOT NULL DEFAULT '[]'::jsonb,
    error          text,
    cost           numeric,
    CONSTRAINT runs_pkey PRIMARY KEY (id),
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
    CONSTRAINT runs_steps_is_array CHECK (jsonb_typeof(steps) = 'array'),
    CONSTRAINT runs_cost_nonnegative CHECK (cost IS NULL OR cost >= 0)
) PARTITION BY RANGE (id);
-- (due_work_id, attempt) was unique; a unique index of a partitioned table must hold the
-- partition key, and a retry's run may fall in the next month. Each attempt's run is
-- inserted under its occurrence's row lock (the claim, the rescue), which is what kept
-- the pair unique; the index stays for the cascade from due_work and for reads by work.
CREATE INDEX runs_attempt_idx ON runs (due_work_id, attempt);
CREATE INDEX runs_task_idx ON runs (task_id, queued_at DESC, id DESC);
CREATE INDEX runs_list_idx ON runs (queued_at DESC, id DESC);
CREATE TABLE runs_default PARTITION OF runs DEFAULT WITH (
    fillfactor = 20, autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_threshold = 1000, autovacuum_analyze_threshold = 1000);

CREATE TABLE run_logs (
    id       bigint GENERATED ALWAYS AS IDENTITY,
    -- Each partition's foreign key references its month's runs (see the top of this file).
    run_id   uuid NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    level    text NOT NULL DEFAULT 'info',
    step_id  text,
    message  text NOT NULL,
    -- The key holds the partition key; a line is still found by its id within its run.
    CONSTRAINT run_logs_pkey PRIMARY KEY (run_id, id),
    CONSTRAINT run_logs_level_known CHECK (level IN ('debug', 'info', 'warning', 'error'))
) PARTITION BY RANGE (run_id);
CREATE TABLE run_logs_default PARTITION OF run_logs DEFAULT;
ALTER TABLE run_logs_default ADD CONSTRAINT run_logs_default_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs_default (id) ON DELETE CASCADE;

CREATE TABLE occurrences (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    task_id      uuid NOT NULL
        CONSTRAINT occurrences_task_id_fkey REFERENCES tasks (id) ON DELETE CASCADE,
    nominal_at   timestamptz NOT NULL,
    decision     text NOT NULL,
    due_work_id  bigint
        CONSTRAINT occurrences_due_work_id_fkey REFERENCES due_work (id) ON DELETE SET NULL,
    decided_at   timestamptz NOT NULL DEFAULT now(),
    detail       text,
    CONSTRAINT occurrences_pkey PRIMARY KEY (id, nominal_at),
    CONSTRAINT occurrences_once_per_time UNIQUE (task_id, nominal_at),
    CONSTRAINT occurrences_decision_known CHECK (
        decision IN (
            'queued', 'coalesced', 'skipped_paused', 'snoozed', 'missed', 'deduplicated',
            'cancelled', 'hop_limit', 'over_quota', 'over_budget', 'rate_limited', 'recomputed'
        )
    )
) PARTITION BY RANGE (nominal_at);
CREATE INDEX occurrences_decided_idx ON occurrences (decided_at);
CREATE INDEX occurrences_due_work_idx ON occurrences (due_work_id) WHERE due_work_id IS NOT NULL;
CREATE TABLE occurrences_default PARTITION OF occurrences DEFAULT
    WITH (autovacuum_vacuum_threshold = 1000, autovacuum_analyze_threshold = 1000);

-- This month and the three after it (the scheduler keeps two ahead from now on). Made
-- before the rows move: an old (v4) id that falls in one of these months' ranges goes to
-- that month, not to the DEFAULT partition, where it would stop the month's partition
-- from being made (PostgreSQL refuses to strand rows of the default). By the time the
-- scheduler makes the month after those, retention has emptied the default partition of
-- the old runs (at the default retention). Months that hold decision records already
-- (back to a year) get theirs too, so that the history moved below is pruned by partition
-- like the new.
DO $$
DECLARE
    oldest timestamptz;
BEGIN
    SELECT min(nominal_at) INTO oldest FROM occurrences_before_0020;
    oldest := least(greatest(coalesce(oldest, now()), now() - interval '12 months'), now());
    PERFORM pao_history_partitions_ensure(
        oldest,
        ((extract(year FROM now() AT TIME ZONE 'UTC') - extract(year FROM oldest AT TIME ZONE 'UTC')) * 12
         + extract(month FROM now() AT TIME ZONE 'UTC')
         - extract(month FROM oldest AT TIME ZONE 'UTC'))::integer + 3);
END $$;

INSERT INTO runs (id, due_work_id, task_id, attempt, status, scheduled_for, queued_at,
                  started_at, finished_at, worker_id, steps, error, cost)
SELECT id, due_work_id, task_id, attempt, status, scheduled_for, queued_at,
       started_at, finished_at, worker_id, steps, error, cost
FROM runs_before_0020;
INSERT INTO run_logs (id, run_id, at, level, step_id, message)
OVERRIDING SYSTEM VALUE
SELECT id, run_id, at, level, step_id, message FROM run_logs_before_0020;
INSERT INTO occurrences (id, task_id, nominal_at, decision, due_work_id, decided_at, detail)
OVERRIDING SYSTEM VALUE
SELECT id, task_id, nominal_at, decision, due_work_id, decided_at, detail
FROM occurrences_before_0020;
-- The new identities go on from where the old ones stopped.
SELECT setval(pg_get_serial_sequence('run_logs', 'id'),
              greatest((SELECT max(id) FROM run_logs_before_0020), 0) + 1, false);
SELECT setval(pg_get_serial_sequence('occurrences', 'id'),
              greatest((SELECT max(id) FROM occurrences_before_0020), 0) + 1, false);

DROP TABLE run_logs_before_0020;
DROP TABLE runs_before_0020;
DROP TABLE occurrences_before_0020;

ALTER TABLE remote_steps ADD CONSTRAINT remote_steps_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs (id) ON DELETE CASCADE;
ALTER TABLE assets ADD CONSTRAINT assets_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs (id) ON DELETE CASCADE;
