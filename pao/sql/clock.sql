-- name: clock_read
-- The database server's clock at this very moment (not the transaction's start, as now() is):
-- every process takes its time from here, whatever its own host's clock says.
SELECT clock_timestamp() AS at
