"""Test hooks shared by the revisions: who applied me, and an optional pause."""

import os

from alembic import op


def record(revision: str) -> None:
    """One row per application of `revision`, in the revision's own transaction."""
    op.execute(
        "CREATE TABLE IF NOT EXISTS migration_log (revision text, backend int, app text,"
        " at timestamptz DEFAULT clock_timestamp())"
    )
    op.execute(
        f"INSERT INTO migration_log (revision, backend, app) VALUES ('{revision}',"
        " pg_backend_pid(), current_setting('application_name'))"
    )
    pause = os.environ.get(f"MIGRATE_TEST_PAUSE_{revision}")
    if pause:
        op.execute(f"SELECT pg_sleep({float(pause)})")
