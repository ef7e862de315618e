CREATE TABLE calls (id serial PRIMARY KEY, lead_id int NOT NULL REFERENCES leads (id),
    sid text NOT NULL);
INSERT INTO calls (lead_id, sid) SELECT id, 'CA' || id FROM leads;
INSERT INTO migration_log (revision, backend, app)
    VALUES ('0003', pg_backend_pid(), current_setting('application_name'));
