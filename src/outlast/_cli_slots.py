"""Registers ``outlast slots`` (heavy imports happen only when it runs)."""

from __future__ import annotations

from .cli import lazy_subcommand

lazy_subcommand(
    "slots",
    "outlast.replication._cli",
    "run",
    help="check replication slots (WAL retention, time to loss) or a CDC offset",
    description="Report every replication slot's retained WAL, wal_status, time to loss and "
    "inactivity against thresholds, or (--offset) whether a change-data-capture consumer may "
    "resume from its stored LSN. Exit 0 ok, 1 warn, 2 critical/lost/unsafe, 3 could not check.",
)
