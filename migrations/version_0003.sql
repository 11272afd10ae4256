-- Workers: events published by a step carry the step's idempotency key, so a
-- retried step publishes once; a task's finished runs may complete it.

ALTER TABLE events ADD COLUMN idempotency_key text;
ALTER TABLE events ADD CONSTRAINT events_idempotency_key_unique UNIQUE (idempotency_key);
