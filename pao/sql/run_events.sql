-- Live run streams travel as notifications only; nothing here is stored.

-- name: run_event_publish
-- Send run events to every API process listening; delivered in order when this commits.
SELECT pg_notify('pao_run_events', payload) FROM unnest(%(payloads)s::text[]) AS payload

-- name: run_stream_announce
-- Tell workers which tasks this API process's clients watch ("?" asks every API to announce).
SELECT pg_notify('pao_streams', %(payload)s)
