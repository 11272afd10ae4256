-- The claim and the end reach runs by the queue row's run_id (version_0021.sql), so nothing
-- bounds a run's id by its occurrence's creation time any more: the two functions
-- version_0020.sql made for that are dropped.
DROP FUNCTION pao_run_id_floor(timestamptz);
DROP FUNCTION pao_run_id_ceiling(timestamptz);
