-- outlast:no-transaction
-- CREATE INDEX CONCURRENTLY cannot run inside a transaction block.
CREATE INDEX CONCURRENTLY IF NOT EXISTS calls_sid ON calls (sid);
INSERT INTO migration_log (revision, backend, app)
    VALUES ('0004', pg_backend_pid(), current_setting('application_name'));
