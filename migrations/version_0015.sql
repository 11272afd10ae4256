-- Durable pipelines: an occurrence can wait for a remote step without a worker.
--
-- queued ─claim─► running ─(a remote step is offered)─► waiting
-- waiting ─(the step is completed)─► queued (same attempt, same run: a continuation)
-- waiting ─(the step failed, retryable, retries left; or its deadline passed, retries left)─►
--     queued (next attempt, new run)
-- waiting ─(failed for good, timed out, cancelled)─► failed | timed_out | cancelled
--
-- A waiting row holds no lease (no worker has it): `wait_until` is when its step's timeout
-- (or the run's deadline) runs out, and the scheduler's rescue job ends it then. The claim
-- and lease indexes keep their predicates: waiting rows are in neither.
ALTER TABLE due_work ADD COLUMN wait_until timestamptz;

ALTER TABLE due_work DROP CONSTRAINT due_work_state_known;
ALTER TABLE due_work ADD CONSTRAINT due_work_state_known CHECK (
    state IN ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled', 'timed_out')
);
-- A lease owner is set exactly while the work runs: a waiting row has none.
ALTER TABLE due_work DROP CONSTRAINT due_work_running_has_lease;
ALTER TABLE due_work ADD CONSTRAINT due_work_running_has_lease CHECK (
    (state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)
);
ALTER TABLE due_work ADD CONSTRAINT due_work_waiting_has_deadline CHECK (
    (state = 'waiting') = (wait_until IS NOT NULL)
);
ALTER TABLE due_work DROP CONSTRAINT due_work_finished_when_final;
ALTER TABLE due_work ADD CONSTRAINT due_work_finished_when_final CHECK (
    (state IN ('queued', 'running', 'waiting')) = (finished_at IS NULL)
);

-- The rescue job's sweep: waiting work past its deadline, earliest first.
CREATE INDEX due_work_waiting_idx ON due_work (wait_until) WHERE state = 'waiting';
