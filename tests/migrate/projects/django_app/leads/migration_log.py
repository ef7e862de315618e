"""Each migration records who applied it, inside its own transaction."""

from django.db import migrations


def record(name: str) -> migrations.RunSQL:
    return migrations.RunSQL(
        "CREATE TABLE IF NOT EXISTS migration_log (revision text, backend int, app text,"
        " at timestamptz DEFAULT clock_timestamp());"
        f" INSERT INTO migration_log (revision, backend, app) VALUES ('{name}',"
        " pg_backend_pid(), current_setting('application_name'))",
        migrations.RunSQL.noop,
    )
