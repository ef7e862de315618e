"""Registers ``outlast migrate`` (heavy imports happen only when it runs)."""

from __future__ import annotations

from .cli import lazy_subcommand

lazy_subcommand(
    "migrate",
    "outlast.migrate._cli",
    "run_command",
    help="run migrations exactly once across many containers (Alembic, Django, SQL files)",
    description="Bring the schema to its target exactly once, whatever number of processes "
    "start together: a session advisory lock on a dedicated direct connection (or a lease "
    "row behind PgBouncer), an 'already at head?' check without locks, a client-side "
    "deadline. Exit codes: 0 at the target, 1 the wait ran out (the lock's holder is named), "
    "2 a usage or configuration error, 3 a migration failed.",
)
