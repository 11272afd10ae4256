-- name: audit_insert
-- Append one audit record; the table refuses updates and deletes.
INSERT INTO audit_log (actor_id, action, target_type, target_id, request_id, detail)
VALUES (%(actor_id)s, %(action)s, %(target_type)s, %(target_id)s, %(request_id)s, %(detail)s)
