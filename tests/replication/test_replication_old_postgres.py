"""PostgreSQL before 17: no ``inactive_since``, no ``invalidation_reason``; outlast tracks
inactivity itself.

Runs against the machine's own PostgreSQL binaries (the newest major version
below 17 under /usr/lib/postgresql) in a private data directory; skips where
none is installed. The ``external`` test runs the monitor against
``OUTLAST_TEST_DSN`` (skipped when unset), creating and dropping one slot when
that server has ``wal_level=logical``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from repl_kit import (
    REPLICATION_SETTINGS,
    Consumer,
    SystemPostgres,
    set_keep_size,
    slot_row,
    sql,
    switch_wal,
    system_postgres_bin_dirs,
    wait_until,
)

from outlast.replication import (
    OffsetVerdict,
    SlotMonitor,
    Thresholds,
    Verdict,
    check_offset,
    create_slot,
    drop_slot,
)
from outlast.testing import ManualClock

OLD = [(major, path) for major, path in system_postgres_bin_dirs() if 13 <= major < 17]


@pytest.fixture(scope="module")
def old_server() -> Iterator[SystemPostgres]:
    if not OLD:
        pytest.skip("no PostgreSQL 13-16 installed under /usr/lib/postgresql")
    _, bin_dir = OLD[-1]
    server = SystemPostgres(bin_dir, settings=REPLICATION_SETTINGS)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_inactivity_tracked_by_outlast_and_lost_without_invalidation_reason(old_server) -> None:
    dsn = old_server.dsn()
    identity = create_slot(dsn, "cdc", plugin="test_decoding")
    clock = ManualClock()
    monitor = SlotMonitor(
        dsn,
        slots=["cdc"],
        clock=clock,
        thresholds=Thresholds(
            inactive_warn=1800, warn_time_to_loss=None, critical_time_to_loss=None
        ),
    )
    try:
        report = monitor.check()
        server = report.snapshot.server
        assert server.major == OLD[-1][0] and server.major < 17
        slot = report["cdc"]
        assert slot.status is not None and slot.status.inactive_source == "outlast"
        assert slot.status.wal_status == "reserved" and slot.inactive_for == 0
        clock.advance(1801)
        slot = monitor.check()["cdc"]
        assert slot.verdict is Verdict.WARN
        assert slot.reasons == ("no consumer for at least 30m (>= warn 30m)",)
        sql(dsn, "CREATE TABLE orders (id int PRIMARY KEY)")
        sql(dsn, "INSERT INTO orders VALUES (1)")
        with Consumer(dsn, "cdc") as consumer:
            wait_until(lambda: consumer.changes >= 1, "the change")
            assert monitor.check()["cdc"].verdict is Verdict.OK
        stored = consumer.stored
        wait_until(lambda: not (slot_row(dsn, "cdc") or {}).get("active"), "release")

        set_keep_size(dsn, "64MB")
        for _ in range(20):
            switch_wal(dsn)
            if monitor.check()["cdc"].verdict is Verdict.LOST:
                break
        slot = monitor.check()["cdc"]
        assert slot.verdict is Verdict.LOST and slot.wal_status == "lost"
        assert slot.status is not None and slot.status.invalidation_reason is None
        offset = check_offset(dsn, slot="cdc", lsn=stored, epoch=identity.epoch, log=False)
        assert offset.verdict is OffsetVerdict.SLOT_LOST
    finally:
        monitor.close()
        drop_slot(dsn, "cdc", missing_ok=True)
        set_keep_size(dsn, "-1")


@pytest.mark.external
def test_monitor_against_an_external_server(external_dsn: str) -> None:
    slot = f"outlast_test_{os.getpid()}"
    with SlotMonitor(external_dsn, listeners=()) as monitor:
        report = monitor.check()
        logical = report.snapshot.server.wal_level == "logical"
    if not logical:
        pytest.skip("the external server does not have wal_level=logical")
    create_slot(external_dsn, slot, plugin="test_decoding")
    try:
        with SlotMonitor(external_dsn, slots=[slot], listeners=()) as monitor:
            status = monitor.check()[slot].status
        assert status is not None and status.slot_type == "logical"
        expected = "server" if report.snapshot.server.major >= 17 else "outlast"
        assert status.inactive_source == expected
    finally:
        drop_slot(external_dsn, slot, missing_ok=True)
