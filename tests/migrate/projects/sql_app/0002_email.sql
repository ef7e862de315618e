ALTER TABLE leads ADD COLUMN email text;
-- A function body with semicolons and a quoted ';' must reach the server whole.
CREATE FUNCTION lead_label(l leads) RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
    RETURN l.name || ' <' || coalesce(l.email, 'no email; yet') || '>';
END;
$body$;
INSERT INTO leads (name, email) VALUES ('seed', 'seed@example.com');
INSERT INTO migration_log (revision, backend, app)
    VALUES ('0002', pg_backend_pid(), current_setting('application_name'));
