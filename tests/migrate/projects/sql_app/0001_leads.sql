-- Leads, and the log the tests read to count who applied each file.
CREATE TABLE leads (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS migration_log (revision text, backend int, app text,
    at timestamptz DEFAULT clock_timestamp());
INSERT INTO migration_log (revision, backend, app)
    VALUES ('0001', pg_backend_pid(), current_setting('application_name'));
