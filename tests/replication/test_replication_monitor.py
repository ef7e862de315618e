"""`SlotMonitor` against real logical replication on a private server.

The headline: a real consumer (``pg_recvlogical``) is paused while WAL is
written under a small ``max_slot_wal_keep_size``: the monitor warns while
the slot is still ``reserved``/``extended``, goes critical, and reports it
``lost`` once a checkpoint removes its WAL, logging each step once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from repl_kit import (
    SEGMENT,
    Consumer,
    RecvLogical,
    set_keep_size,
    slot_row,
    sql,
    switch_wal,
    wait_until,
)

import outlast
from outlast.replication import (
    Lsn,
    SlotChange,
    SlotMonitor,
    Thresholds,
    Verdict,
    render_prometheus,
)
from outlast.supervise import Supervisor
from outlast.testing import ManualClock

NO_TTL = {"warn_time_to_loss": None, "critical_time_to_loss": None}


def _tags(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split()[0] for r in caplog.records if r.getMessage().startswith("[SLOT")]


@pytest.mark.slow
def test_paused_consumer_warns_before_unreserved_then_lost(
    repl_db, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    set_keep_size(repl_db.admin_dsn, "128MB")
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    consumer = RecvLogical(repl_db.server, repl_db.name, "cdc", tmp_path / "changes.txt")
    monitor = SlotMonitor(repl_db.dsn(), slots=["cdc"], thresholds=Thresholds(**NO_TTL))
    seen: list[tuple[Verdict, str | None]] = []
    caplog.set_level(logging.INFO, logger="outlast")
    try:
        sql(repl_db.dsn(), "CREATE TABLE orders (id int PRIMARY KEY)")
        sql(repl_db.dsn(), "INSERT INTO orders VALUES (1)")
        wait_until(
            lambda: (
                (tmp_path / "changes.txt").exists()
                and "orders" in (tmp_path / "changes.txt").read_text()
            ),
            "the consumer to receive the first change",
        )
        assert monitor.check()["cdc"].verdict is Verdict.OK
        consumer.pause()
        for _ in range(30):
            switch_wal(repl_db.dsn())
            slot = monitor.check()["cdc"]
            seen.append((slot.verdict, slot.wal_status))
            if slot.verdict is Verdict.LOST:
                break
        else:
            pytest.fail(f"the slot was never lost: {seen}")
    finally:
        consumer.close()
        monitor.close()
    statuses = [status for _, status in seen]
    first_warn = next(i for i, (v, _) in enumerate(seen) if v >= Verdict.WARN)
    first_danger = next(i for i, s in enumerate(statuses) if s in ("unreserved", "lost"))
    assert first_warn < first_danger, seen
    assert seen[first_warn] == (Verdict.WARN, seen[first_warn][1])
    assert seen[first_warn][1] in ("reserved", "extended")
    assert Verdict.CRITICAL in [v for v, _ in seen[:first_danger]], seen
    assert seen[-1] == (Verdict.LOST, "lost")
    # One line per change of verdict, in order, and one when the slot turns unreserved
    # (if a check saw it before the checkpoint removed its WAL).
    unreserved = ["[SLOT_CRITICAL]"] if "unreserved" in statuses else []
    assert _tags(caplog) == ["[SLOT_WARN]", "[SLOT_CRITICAL]", *unreserved, "[SLOT_LOST]"]
    lost = [r for r in caplog.records if r.getMessage().startswith("[SLOT_LOST]")][0]
    assert lost.slot == "cdc" and lost.verdict == "lost"


def test_time_to_loss_from_growth_rate(repl_db) -> None:
    # The clock is injected; the WAL is real: 2 segments per "minute".
    set_keep_size(repl_db.admin_dsn, "256MB")
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('slow', 'test_decoding')")
    clock = ManualClock()
    monitor = SlotMonitor(
        repl_db.dsn(),
        clock=clock,
        thresholds=Thresholds(
            warn_fraction=None,
            critical_fraction=None,
            warn_time_to_loss=600,
            critical_time_to_loss=240,
            inactive_warn=None,
        ),
    )
    with monitor:
        first = monitor.check()["slow"]
        assert first.time_to_loss is None and first.verdict is Verdict.OK  # no rate yet
        verdicts = []
        for _ in range(6):
            clock.advance(60)
            switch_wal(repl_db.dsn(), 2)
            slot = monitor.check()["slow"]
            verdicts.append(slot.verdict)
            if slot.status is not None and slot.status.safe_wal_size is not None:
                rate = slot.growth_rate
                assert rate is not None and rate == pytest.approx(2 * SEGMENT / 60, rel=0.25)
                assert slot.time_to_loss == pytest.approx(slot.status.safe_wal_size / rate)
    # 256 MB at ~0.5 MB/s: about 8 minutes to loss at first, then less and less.
    assert verdicts[0] is Verdict.WARN, verdicts
    assert Verdict.CRITICAL in verdicts, verdicts
    assert verdicts == sorted(verdicts), verdicts


def test_caught_up_consumer_has_no_time_to_loss_on_a_busy_server(repl_db) -> None:
    # A consumer keeping up: WAL flows (its own database), retained WAL does not grow.
    set_keep_size(repl_db.admin_dsn, "256MB")
    sql(repl_db.dsn(), "CREATE TABLE orders (id int PRIMARY KEY)")
    sql(repl_db.dsn(), "CREATE PUBLICATION cdc FOR TABLE orders")
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('busy', 'pgoutput')")
    clock = ManualClock()
    monitor = SlotMonitor(repl_db.dsn(), clock=clock)
    with Consumer(repl_db.dsn(), "busy", publication="cdc") as consumer, monitor:
        for i in range(1, 6):
            sql(repl_db.dsn(), "INSERT INTO orders VALUES (%s)", (i,))
            wait_until(lambda i=i: consumer.changes >= i, "the consumer to catch up")
            clock.advance(30)
            report = monitor.check()
        slot = report["busy"]
        assert slot.active and slot.verdict is Verdict.OK
        assert slot.time_to_loss is None or slot.time_to_loss > 6 * 3600
        assert report.wal_rate is not None and report.wal_rate > 0


def test_unlimited_keep_size_uses_byte_thresholds_and_budget(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('disk', 'test_decoding')")
    monitor = SlotMonitor(
        repl_db.dsn(),
        thresholds=Thresholds(
            warn_bytes="32MB", critical_bytes="64MB", wal_budget="100MB", **NO_TTL
        ),
    )
    with monitor:
        report = monitor.check()
        assert report.snapshot.server.max_slot_wal_keep_size is None
        assert report["disk"].verdict is Verdict.OK
        assert report["disk"].limit_bytes == 100 * 2**20  # the budget stands in for the limit
        switch_wal(repl_db.dsn(), 3)
        slot = monitor.check()["disk"]
        assert slot.verdict is Verdict.WARN, slot.reasons
        assert slot.status is not None and slot.status.safe_wal_size is None
        assert slot.bytes_left == 100 * 2**20 - slot.retained_bytes
        switch_wal(repl_db.dsn(), 2)
        assert monitor.check()["disk"].verdict is Verdict.CRITICAL


def test_inactivity_is_tracked_by_outlast_before_postgres_17(repl_db) -> None:
    # track_inactivity=True takes the path servers before 17 need (no inactive_since).
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('idle', 'test_decoding')")
    clock = ManualClock()
    changes: list[SlotChange] = []
    monitor = SlotMonitor(
        repl_db.dsn(),
        clock=clock,
        track_inactivity=True,
        listeners=[changes.append],
        thresholds=Thresholds(inactive_warn=600, inactive_critical=3600),
    )
    with monitor:
        slot = monitor.check()["idle"]
        assert slot.status is not None and slot.status.inactive_source == "outlast"
        assert slot.status.inactive_since == clock.time() and slot.inactive_for == 0
        clock.advance(601)
        assert monitor.check()["idle"].verdict is Verdict.WARN
        with Consumer(repl_db.dsn(), "idle"):
            active = monitor.check()["idle"]
            assert active.active and active.verdict is Verdict.OK
            assert active.status is not None and active.status.inactive_since is None
        wait_until(lambda: not (slot_row(repl_db.dsn(), "idle") or {}).get("active"), "release")
        clock.advance(3599)
        again = monitor.check()["idle"]  # inactive again: counted from now, not from before
        assert again.verdict is Verdict.OK and again.inactive_for == 0
        clock.advance(3600)
        assert monitor.check()["idle"].verdict is Verdict.CRITICAL
    assert [(c.previous, c.current) for c in changes] == [
        (Verdict.OK, Verdict.WARN),
        (Verdict.WARN, Verdict.OK),
        (Verdict.OK, Verdict.CRITICAL),
    ]


def test_server_inactive_since_on_postgres_17_and_later(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('fresh', 'test_decoding')")
    with SlotMonitor(repl_db.dsn()) as monitor:
        report = monitor.check()
    slot = report["fresh"]
    assert report.snapshot.server.major >= 17
    assert slot.status is not None and slot.status.inactive_source == "server"
    assert slot.inactive_for is not None and 0 <= slot.inactive_for < 60


def test_missing_watched_slot_is_lost_and_unwatched_slots_are_ignored(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('other', 'test_decoding')")
    with SlotMonitor(repl_db.dsn(), slots=["debezium"]) as monitor:
        report = monitor.check()
    assert [s.name for s in report] == ["debezium"]
    assert report["debezium"].verdict is Verdict.LOST and report["debezium"].status is None
    assert report.worst is Verdict.LOST
    assert "outlast_replication_slot_present" in render_prometheus(report)


def test_reminders_while_a_slot_stays_bad(repl_db, caplog: pytest.LogCaptureFixture) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('stuck', 'test_decoding')")
    clock = ManualClock()
    caplog.set_level(logging.WARNING, logger="outlast")
    monitor = SlotMonitor(
        repl_db.dsn(), clock=clock, remind_every=300, thresholds=Thresholds(warn_bytes=1)
    )
    with monitor:
        switch_wal(repl_db.dsn())
        for _ in range(4):
            monitor.check()
            clock.advance(150)
    warns = [r for r in caplog.records if r.getMessage().startswith("[SLOT_WARN]")]
    assert [r.reminder for r in warns] == [False, True]


def test_outage_is_reported_and_health_says_so() -> None:
    from outlast.testing import free_port

    guard = outlast.Guard("repl-test", retry=outlast.Retry(attempts=2, timeout=1.0))
    dead = SlotMonitor(f"host=127.0.0.1 port={free_port()} user=postgres", guard=guard)
    with pytest.raises(outlast.DatabaseUnavailable):
        dead.check()
    status, doc = dead.health()
    check = doc["checks"]["replication:check"][0]
    assert status == 200 and doc["status"] == "warn"
    assert "unavailable: connection_refused" in check["output"]
    assert dead.ready() is False  # a consumer that cannot see its slot is not ready
    assert dead.last is None


def test_supervised_loop_checks_and_survives_a_restart(repl_db, caplog) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('looped', 'test_decoding')")
    monitor = SlotMonitor(repl_db.dsn(), thresholds=Thresholds(warn_bytes=1))
    supervisor = Supervisor()
    caplog.set_level(logging.INFO, logger="outlast")
    try:
        monitor.start(supervisor, every=0.2)
        wait_until(lambda: monitor.last is not None, "the first check")
        # Every session of the monitor is killed: the loop reconnects by itself.
        sql(
            repl_db.dsn(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        switch_wal(repl_db.dsn())
        wait_until(
            lambda: monitor.last is not None and monitor.last["looped"].verdict is Verdict.WARN,
            "a check after the sessions were killed",
        )
        assert supervisor.health()["status"] == "pass"
    finally:
        assert supervisor.stop(timeout=10) == []
        monitor.close()
    assert any(r.getMessage().startswith("[SLOT_WARN] slot=looped") for r in caplog.records)


def test_lsn_of_snapshot_matches_server(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('pos', 'test_decoding')")
    with SlotMonitor(repl_db.dsn()) as monitor:
        report = monitor.check()
    row = slot_row(repl_db.dsn(), "pos")
    assert row is not None
    status = report["pos"].status
    assert status is not None and status.restart_lsn == Lsn(row["restart_lsn"])
    # Measured against the position read with the slot, never before it.
    assert status.retained_bytes is not None
    assert status.retained_bytes >= report.snapshot.server.current_lsn - status.restart_lsn


def test_thread_safe_concurrent_checks(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('conc', 'test_decoding')")
    errors: list[BaseException] = []
    with SlotMonitor(repl_db.dsn()) as monitor:

        def work() -> None:
            try:
                for _ in range(5):
                    assert monitor.check()["conc"].verdict is Verdict.OK
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors


def test_a_plain_role_can_monitor(repl_db) -> None:
    # Slots, settings and the WAL position are readable by any role (pg_monitor adds
    # the details of other users' WAL senders).
    role = f"mon_{repl_db.name}"
    sql(repl_db.admin_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
        with SlotMonitor(repl_db.dsn(user=role), slots=["cdc"]) as monitor:
            report = monitor.check()
        assert report["cdc"].verdict is Verdict.OK
        assert report["cdc"].retained_bytes is not None
        assert report.snapshot.server.wal_level == "logical"
    finally:
        sql(repl_db.admin_dsn, f"DROP ROLE {role}")
