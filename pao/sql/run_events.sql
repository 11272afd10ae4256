-- Live run streams travel as notifications only; nothing here is stored.

-- name: run_event_publish
-- Send run events to every API process listening; delivered in order when this commits. The
-- payloads come as one JSON array: a text[] parameter would be escaped quote by quote in Python.
SELECT pg_notify('pao_run_events', payload)
FROM json_array_elements_text(%(payloads)s::json) WITH ORDINALITY AS p (payload, n)
ORDER BY n

-- name: run_stream_announce
-- Tell workers which tasks this API process's clients watch ("?" asks every API to announce).
SELECT pg_notify('pao_streams', %(payload)s)
