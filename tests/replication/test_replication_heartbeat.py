"""`Heartbeat`: a slot on an idle database advances only when something is published.

The setting of the incidents: the slot's database is quiet, another database
on the same server is busy. The consumer is connected and healthy, but it
receives nothing, acknowledges nothing, and the slot holds all the WAL the
busy database writes. Without a heartbeat the monitor rightly warns; with
one, the same setup raises no alert.
"""

from __future__ import annotations

import time

import pytest
from repl_kit import SEGMENT, Consumer, sql, switch_wal, wait_until

from outlast import ConfigurationError
from outlast.replication import Heartbeat, SlotMonitor, Thresholds, Verdict
from outlast.supervise import Supervisor

STEPS = 24
WARN = 10 * SEGMENT
THRESHOLDS = Thresholds(
    warn_bytes=WARN,
    warn_fraction=None,
    critical_fraction=None,
    warn_time_to_loss=None,
    critical_time_to_loss=None,
    inactive_warn=None,
)


def _cdc(repl_db) -> None:
    sql(repl_db.dsn(), "CREATE TABLE orders (id int PRIMARY KEY)")
    sql(repl_db.dsn(), "CREATE PUBLICATION cdc FOR TABLE orders")
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'pgoutput')")


def _first_order(repl_db, consumer: Consumer) -> None:
    # The consumer processes one order and acknowledges it; from then on the
    # database is idle. (A consumer that has never received anything lets
    # psycopg2 acknowledge keepalive positions for it; Debezium does not.)
    sql(repl_db.dsn(), "INSERT INTO orders VALUES (1)")
    wait_until(lambda: consumer.changes >= 1, "the first order")


def _busy_elsewhere(repl_db, monitor: SlotMonitor, steps: int) -> list[tuple[Verdict, int]]:
    """One segment of WAL a step in another database; the slot's verdict after each."""
    seen = []
    for _ in range(steps):
        switch_wal(repl_db.admin_dsn)
        time.sleep(0.5)
        slot = monitor.check()["cdc"]
        seen.append((slot.verdict, slot.retained_bytes or 0))
    return seen


@pytest.mark.slow
def test_idle_database_without_heartbeat_warns(repl_db) -> None:
    _cdc(repl_db)
    with (
        Consumer(repl_db.dsn(), "cdc", publication="cdc") as consumer,
        SlotMonitor(repl_db.dsn(), slots=["cdc"], thresholds=THRESHOLDS, listeners=()) as monitor,
    ):
        _first_order(repl_db, consumer)
        seen = _busy_elsewhere(repl_db, monitor, STEPS)
        assert consumer.changes == 1
    assert seen[-1][0] is Verdict.WARN, seen
    assert seen[-1][1] >= WARN


@pytest.mark.slow
def test_idle_database_with_heartbeat_raises_no_alert(repl_db) -> None:
    _cdc(repl_db)
    heartbeat = Heartbeat(repl_db.dsn(), publication="cdc", every=0.2)
    heartbeat.ensure()  # the heartbeat table is published before the consumer starts
    published = sql(
        repl_db.dsn(), "SELECT tablename FROM pg_publication_tables WHERE pubname = 'cdc'"
    )
    assert sorted(t for (t,) in published) == ["orders", "outlast_heartbeat"]
    supervisor = Supervisor()
    try:
        with (
            Consumer(repl_db.dsn(), "cdc", publication="cdc") as consumer,
            SlotMonitor(
                repl_db.dsn(), slots=["cdc"], thresholds=THRESHOLDS, listeners=()
            ) as monitor,
        ):
            _first_order(repl_db, consumer)
            heartbeat.start(supervisor)
            wait_until(lambda: consumer.changes >= 3, "the consumer to see heartbeats")
            seen = _busy_elsewhere(repl_db, monitor, STEPS)
    finally:
        assert supervisor.stop(timeout=10) == []
        heartbeat.close()
    assert all(v is Verdict.OK for v, _ in seen), seen
    assert max(r for _, r in seen) < WARN
    assert heartbeat.beats >= STEPS  # about five a second for the whole run


def test_message_mode_reaches_slots_without_a_table(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('msgs', 'test_decoding')")
    heartbeat = Heartbeat(repl_db.dsn(), mode="message", name="worker-1")
    try:
        heartbeat.beat()
        heartbeat.beat()
    finally:
        heartbeat.close()

    def beats() -> list[str]:
        peek = "SELECT data FROM pg_logical_slot_peek_changes('msgs', NULL, NULL)"
        return [d for (d,) in sql(repl_db.dsn(), peek) if "outlast.heartbeat" in d]

    wait_until(lambda: len(beats()) == 2, "both beats to be decodable")
    assert all("worker-1" in d for d in beats())
    assert sql(repl_db.dsn(), "SELECT to_regclass('outlast_heartbeat')") == [(None,)]


def test_publication_for_all_tables_is_left_alone(repl_db) -> None:
    sql(repl_db.dsn(), "CREATE PUBLICATION everything FOR ALL TABLES")
    heartbeat = Heartbeat(repl_db.dsn(), publication="everything", table="ops.beats")
    sql(repl_db.dsn(), "CREATE SCHEMA ops")
    try:
        heartbeat.beat()
        heartbeat.beat()
    finally:
        heartbeat.close()
    assert sql(repl_db.dsn(), "SELECT id, beats FROM ops.beats") == [("outlast", 2)]
    assert sql(repl_db.dsn(), "SELECT count(*) FROM pg_publication_rel") == [(0,)]


def test_missing_publication_and_bad_names_are_configuration_errors(repl_db) -> None:
    heartbeat = Heartbeat(repl_db.dsn(), publication="nope")
    try:
        with pytest.raises(ConfigurationError, match="publication 'nope' does not exist"):
            heartbeat.ensure()
    finally:
        heartbeat.close()
    with pytest.raises(ConfigurationError, match="publication"):
        Heartbeat(repl_db.dsn(), publication="a.b")
    with pytest.raises(ConfigurationError, match="table"):
        Heartbeat(repl_db.dsn(), table="beats; DROP TABLE x")
    with pytest.raises(ConfigurationError, match="mode"):
        Heartbeat(repl_db.dsn(), mode="udp")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="every"):
        Heartbeat(repl_db.dsn(), every=0)


def test_heartbeat_reconnects_after_its_session_is_killed(repl_db) -> None:
    heartbeat = Heartbeat(repl_db.dsn())
    try:
        heartbeat.beat()
        sql(
            repl_db.dsn(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        heartbeat.beat()  # the Guard retries on a new connection
    finally:
        heartbeat.close()
    assert sql(repl_db.dsn(), "SELECT beats FROM outlast_heartbeat") == [(2,)]
