"""Migrations that run exactly once across many containers.

Install with ``pip install 'outlast[migrate,psycopg]'`` (and ``[django]`` for Django).

::

    import outlast.migrate as migrate

    # In every container's start-up; OUTLAST_MIGRATE=1 (or RUN_MIGRATIONS=1)
    # where it may migrate, 0 where it only waits for the schema:
    status = migrate.run(migrate.AlembicRunner("alembic.ini"), dsn=DATABASE_URL)
    status.outcome          # "applied" | "at_head" | "ahead"

The lock is a session advisory lock on a dedicated direct connection (or a
lease row behind a transaction pooler), polled against a client-side
deadline; followers check "already at head?" without any lock first; the
DDL runs on its own connection, fenced statement by statement; a dead or
frozen leader loses the lock within a lease (10 s) and the next one
finishes. Runners: `AlembicRunner`, `DjangoRunner`, `SqlRunner`. The
command line is ``outlast migrate`` (see the README section "Migrations
across many containers").

Importing this module imports no third-party package; each runner imports
its tool when it is built.
"""

from __future__ import annotations

from ._advisory import advisory_key
from ._alembic import AlembicRunner
from ._django import DjangoRunner
from ._errors import (
    LockNotSupported,
    MigrationError,
    MigrationFailed,
    MigrationLockLost,
    MigrationTimeout,
)
from ._holder import Holder
from ._run import run
from ._runner import ApplyContext, Reader, Runner
from ._sql import SqlRunner
from ._state import SchemaState
from ._status import SchemaStatus

__all__ = [
    "AlembicRunner",
    "ApplyContext",
    "DjangoRunner",
    "Holder",
    "LockNotSupported",
    "MigrationError",
    "MigrationFailed",
    "MigrationLockLost",
    "MigrationTimeout",
    "Reader",
    "Runner",
    "SchemaState",
    "SchemaStatus",
    "SqlRunner",
    "advisory_key",
    "run",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("outlast.migrate._"):
        try:
            _obj.__module__ = "outlast.migrate"
        except (AttributeError, TypeError):  # pragma: no cover
            pass
del _name, _obj
