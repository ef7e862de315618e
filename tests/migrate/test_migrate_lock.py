"""The lock session against a real PostgreSQL: settings, holder, checked release, loss, waits."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from migrate_kit import SQL_DIR, SQL_REVISIONS, log_counts, wait_for

import outlast.migrate as migrate
from outlast.migrate._advisory import AdvisoryLock
from outlast.migrate._lease import LeaseLock
from outlast.migrate._settings import Settings


def _settings(lease: float = 10.0, **changes: Any) -> Settings:
    options: dict[str, Any] = {
        "role": None,
        "wait": 30.0,
        "on_timeout": "fail",
        "lock": None,
        "name": "default",
        "lease": lease,
        "poll": min(0.5, lease / 2),
        "connect_timeout": 5.0,
        "lock_timeout": None,
        "statement_timeout": None,
        "environ": {},
    }
    options.update(changes)
    return Settings.build(**options)


def _holder_of(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ).fetchall()


def test_the_lock_session_carries_server_and_client_keepalives(pg_dsn: str) -> None:
    lock = AdvisoryLock(pg_dsn, _settings(lease=12.0), holder="test:1", key_id="k")
    try:
        rows, _ = lock.execute(
            "SELECT current_setting('idle_session_timeout'), current_setting('tcp_user_timeout'),"
            " current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'),"
            " current_setting('tcp_keepalives_count'), current_setting('statement_timeout'),"
            " current_setting('lock_timeout'), current_setting('application_name')"
        )
        # Server side: a holder that goes silent loses its session within a lease.
        assert rows[0] == ("12s", "12000", "3", "2", "3", "0", "0", "outlast-migrate test:1")
        client = lock.connection().info.get_parameters()
        assert client["keepalives"] == "1"
        assert client["tcp_user_timeout"] == "12000"
        assert client["keepalives_idle"] == "3"
    finally:
        lock.close()


def test_acquire_names_the_holder_and_release_is_checked_on_the_same_session(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings()
    first = AdvisoryLock(pg_dsn, settings, holder="api-1:7", key_id="k")
    second = AdvisoryLock(pg_dsn, settings, holder="worker-1:9", key_id="k")
    try:
        assert first.acquire()
        assert not second.acquire()
        holder = second.holder()
        assert holder is not None
        assert holder.pid == first.backend_pid
        assert holder.application_name is not None
        assert holder.application_name.startswith("outlast-migrate leader api-1:7 @")
        assert holder.client is not None and holder.client.startswith("127.0.0.1:")
        assert holder.since is not None
        assert abs(holder.since.timestamp() - time.time()) < 60
        assert _holder_of(pg_dsn) == [(first.backend_pid,)]
        assert first.release() is True
        assert _holder_of(pg_dsn) == []
        assert second.acquire()
        # Released behind its back: the release says so instead of pretending.
        second.execute("SELECT pg_advisory_unlock_all()")
        with caplog.at_level(logging.WARNING, logger="outlast"):
            assert second.release() is False
    finally:
        first.close()
        second.close()


def test_a_holder_whose_session_dies_learns_it_and_fences_itself(pg_dsn: str) -> None:
    lock = AdvisoryLock(pg_dsn, _settings(lease=2.0), holder="api-1:7", key_id="k")
    fenced = threading.Event()
    try:
        assert lock.acquire()
        lock.on_lost(fenced.set)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (lock.backend_pid,))
        # The heartbeat runs every lease/4 = 0.5 s.
        assert fenced.wait(10), "the heartbeat never noticed"
        assert lock.lost
        with pytest.raises(migrate.MigrationLockLost, match="lost"):
            lock.check_held()
        assert lock.release() is False
    finally:
        lock.close()


def test_waiting_ends_on_a_client_side_deadline_naming_the_holder(
    pg_database: Any, pg_server: Any
) -> None:
    dsn = pg_database.dsn()
    # The seed's setting: every session of the database gets a short
    # statement_timeout. A blocking pg_advisory_lock would die on it; polling
    # waits the whole client-side deadline and names who is in the way.
    pg_server.psql(f"ALTER DATABASE {pg_database.name} SET statement_timeout = '300ms'")
    classid, objid = migrate.advisory_key("default")
    with psycopg.connect(dsn, autocommit=True, application_name="someone-else") as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        other_pid = other.info.backend_pid
        started = time.monotonic()
        with pytest.raises(migrate.MigrationTimeout) as info:
            migrate.run(migrate.SqlRunner(SQL_DIR), dsn=dsn, wait=2.0, poll=0.2)
        waited = time.monotonic() - started
    assert waited >= 1.5
    error = info.value
    assert error.reason == "lock_held"
    assert error.holder is not None and error.holder.pid == other_pid
    assert f"pid={other_pid}" in str(error)
    assert 'app="someone-else"' in str(error)
    assert "since=" in str(error)
    assert error.state is not None and error.state.pending == SQL_REVISIONS
    assert log_counts(dsn) == {}


def test_followers_at_head_never_touch_the_lock(pg_dsn: str) -> None:
    assert migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn).outcome == "applied"
    classid, objid = migrate.advisory_key("default")
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        # Held by someone else, yet a process at head is ready at once.
        status = migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn, wait=5.0)
    assert status.outcome == "at_head"
    assert status.ready
    assert not status.leader
    assert status.waited < 4.0


def test_a_waiting_role_starts_once_another_process_migrated(pg_dsn: str) -> None:
    box: dict[str, Any] = {}

    def waiter() -> None:
        try:
            box["status"] = migrate.run(
                migrate.SqlRunner(SQL_DIR), dsn=pg_dsn, role="wait", wait=20.0, poll=0.2
            )
        except BaseException as exc:  # reported below
            box["error"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        time.sleep(1.0)
        assert thread.is_alive(), box  # still waiting: the schema is not there yet
        assert log_counts(pg_dsn) == {}
        assert migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn).outcome == "applied"
    finally:
        thread.join(30)
    assert "error" not in box, box
    assert box["status"].outcome == "at_head"
    assert not box["status"].leader


def test_a_waiting_role_gives_up_naming_what_is_pending(pg_dsn: str) -> None:
    with pytest.raises(migrate.MigrationTimeout) as info:
        migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn, role="wait", wait=1.0, poll=0.2)
    assert info.value.reason == "pending"
    assert "4 pending (database at base, head 0004)" in str(info.value)


def test_lease_lock_expires_when_its_holder_stops_renewing(pg_dsn: str) -> None:
    settings = _settings(lease=2.0, lock="lease")
    first = LeaseLock(pg_dsn, settings, holder="api-1:7", key_id="k")
    second = LeaseLock(pg_dsn, settings, holder="worker-1:9", key_id="k")
    try:
        assert first.acquire()
        token = first.token
        assert not second.acquire()
        holder = second.holder()
        assert holder is not None
        assert holder.application_name is not None and "api-1:7" in holder.application_name
        assert holder.lease_expires is not None
        time.sleep(2.5)  # heartbeats keep it
        assert not second.acquire()
        first._stop_heartbeat()  # frozen: no more renewals
        assert wait_for(second.acquire, 6.0, interval=0.2)
        assert second.token == (token or 0) + 1
        assert not first.still_held()
        assert first.release() is False  # not its lease any more
        assert second.release() is True
        assert second.holder() is None
    finally:
        first.close()
        second.close()


def test_lease_mode_applies_through_a_direct_connection_too(pg_dsn: str) -> None:
    status = migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn, lock="lease")
    assert status.applied == SQL_REVISIONS
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT released_at IS NOT NULL, expires_at <= now() FROM outlast_migrate_lease"
        ).fetchone()
    assert row == (True, True)


def test_changed_applied_file_is_reported_not_rerun(
    pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (x int);")
    assert migrate.run(migrate.SqlRunner(tmp_path), dsn=pg_dsn).applied == ("0001",)
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (x bigint);")
    with caplog.at_level(logging.WARNING, logger="outlast"):
        status = migrate.run(migrate.SqlRunner(tmp_path), dsn=pg_dsn)
    assert status.outcome == "at_head"
    assert "[MIGRATION] changed file=0001_t.sql" in caplog.text


def test_a_failing_migration_rolls_back_and_raises(pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (x int); SELECT nope FROM nowhere;")
    with pytest.raises(migrate.MigrationFailed) as info:
        migrate.run(migrate.SqlRunner(tmp_path), dsn=pg_dsn)
    assert info.value.reason == "undefined_table"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT to_regclass('ok') IS NOT NULL, to_regclass('half') IS NOT NULL"
        ).fetchone()
        versions = conn.execute("SELECT version FROM outlast_schema_migrations").fetchall()
    assert tables == (True, False)  # 0002 left nothing behind
    assert versions == [("0001",)]
    assert _holder_of(pg_dsn) == []
