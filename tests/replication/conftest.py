"""A private PostgreSQL server with logical decoding for the replication tests.

Its own server (not the shared ``pg_server``): these tests change
``max_slot_wal_keep_size``, fill and invalidate slots and write hundreds of
megabytes of WAL, none of which other tests should see.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from repl_kit import REPLICATION_SETTINGS, drop_slots, set_keep_size, sql

from outlast.testing import EmbeddedPostgres

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def repl_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(settings=REPLICATION_SETTINGS)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@dataclass(frozen=True)
class ReplDatabase:
    server: EmbeddedPostgres
    name: str

    def dsn(self, **params: object) -> str:
        return self.server.dsn(self.name, **params)

    @property
    def admin_dsn(self) -> str:
        return self.server.dsn("postgres")


@pytest.fixture
def repl_db(repl_server: EmbeddedPostgres) -> Iterator[ReplDatabase]:
    """A fresh database on the replication server; every slot is dropped afterwards."""
    name = f"r_{os.getpid()}_{next(_counter)}"
    repl_server.create_database(name)
    db = ReplDatabase(repl_server, name)
    try:
        yield db
    finally:
        drop_slots(db.admin_dsn)
        set_keep_size(db.admin_dsn, "-1")
        repl_server.drop_database(name)
        sql(db.admin_dsn, "CHECKPOINT")  # recycle the WAL the test's slots held
