"""Outages during a migration: a restart while followers wait, a leader losing its sessions,
and the CREATE INDEX CONCURRENTLY deadlock that blocking waiters cause (and polling does not).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import pytest
from migrate_kit import (
    ALEMBIC_INI,
    ALEMBIC_REVISIONS,
    SQL_DIR,
    SQL_REVISIONS,
    OutlastLog,
    log_counts,
    wait_for,
)

import outlast.migrate as migrate


def _run_in_thread(box: dict[str, Any], key: str, **kwargs: Any) -> threading.Thread:
    def target() -> None:
        try:
            box[key] = migrate.run(**kwargs)
        except BaseException as exc:  # reported by the test
            box[key] = exc

    thread = threading.Thread(target=target, name=f"migrate-{key}", daemon=True)
    thread.start()
    return thread


@pytest.mark.destructive
def test_followers_ride_out_a_restart_and_one_of_them_finishes(
    pg_control: Any, pg_database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = pg_database.dsn()
    classid, objid = migrate.advisory_key("default")
    box: dict[str, Any] = {}
    threads: list[threading.Thread] = []
    holder = psycopg.connect(dsn, autocommit=True, application_name="stuck-holder")
    try:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        with caplog.at_level(logging.INFO, logger="outlast"):
            for i in range(3):
                threads.append(
                    _run_in_thread(
                        box,
                        f"f{i}",
                        runner=migrate.SqlRunner(SQL_DIR),
                        dsn=dsn,
                        wait=60.0,
                        poll=0.2,
                    )
                )
            assert wait_for(lambda: caplog.text.count("reason=lock_held") >= 3, 20)
            pg_control.restart()  # the holder's session dies with the old server
            for thread in threads:
                thread.join(60)
    finally:
        holder.close()
    statuses = [box[f"f{i}"] for i in range(3)]
    assert all(isinstance(s, migrate.SchemaStatus) for s in statuses), statuses
    assert sorted(rev for s in statuses for rev in s.applied) == list(SQL_REVISIONS)
    assert {rev: len(apps) for rev, apps in log_counts(dsn).items()} == dict.fromkeys(
        SQL_REVISIONS, 1
    )
    waits = [r.getMessage() for r in caplog.records if "[MIGRATION] waiting" in r.getMessage()]
    outage = [w for w in waits if "reason=lock_held" not in w]
    assert outage, waits  # they said why they waited during the restart
    reasons = sorted({w.split("reason=")[1].split()[0] for w in outage})
    print(f"\nreasons logged while the server restarted: {reasons}")


def _session(dsn: str, pattern: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s"
            " AND query LIKE '%%pg_sleep%%' AND state = 'active'",
            (pattern,),
        ).fetchone()
        if row is None and not pattern.startswith("outlast-migrate run"):
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (pattern,)
            ).fetchone()
    return int(row[0]) if row else None


@pytest.mark.parametrize("victim", ["lock session", "DDL session"])
def test_a_leader_that_loses_a_session_mid_migration_leaves_no_half_step(
    pg_dsn: str, victim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATE_TEST_PAUSE_0002", "3")  # 0002 sleeps inside its transaction
    box: dict[str, Any] = {}
    with OutlastLog() as log:
        thread = _run_in_thread(
            box,
            "leader",
            runner=migrate.AlembicRunner(ALEMBIC_INI),
            dsn=pg_dsn,
            wait=60.0,
            lease=2.0,
            poll=0.2,
        )
        try:
            ddl = wait_for(lambda: _session(pg_dsn, "outlast-migrate run %"), 20)
            assert ddl, "the leader never reached revision 0002"
            assert log_counts(pg_dsn).keys() == {"0001"}
            target = (
                ddl if victim == "DDL session" else _session(pg_dsn, "outlast-migrate leader %")
            )
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (target,))
        finally:
            thread.join(60)
    status = box["leader"]
    assert isinstance(status, migrate.SchemaStatus), status
    # 0002 was rolled back with its session and applied again, once.
    assert {rev: len(apps) for rev, apps in log_counts(pg_dsn).items()} == dict.fromkeys(
        ALEMBIC_REVISIONS, 1
    )
    assert status.applied == ALEMBIC_REVISIONS
    assert status.outcome == "applied"
    if victim == "lock session":
        # The heartbeat noticed, shut the DDL socket down, and the release
        # said the lock was no longer this session's.
        assert "[MIGRATION] lock_lost" in log.text
        assert "[MIGRATION] release_failed" in log.text
    else:
        assert "reason=admin_shutdown" in log.text
    assert log.text.count("[MIGRATION] acquired") == 2


def test_a_blocking_lock_waiter_deadlocks_create_index_concurrently(pg_dsn: str) -> None:
    """Why waiters poll: Flyway's and golang-migrate's blocked lock call holds a snapshot
    that the holder's CREATE INDEX CONCURRENTLY waits for, while the holder keeps the lock
    until the index is built — a cycle the server cannot see (flyway#1654)."""
    classid, objid = migrate.advisory_key("default")
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE calls (sid text); INSERT INTO calls VALUES ('CA1')")
    holder = psycopg.connect(pg_dsn, autocommit=True)
    waiter = psycopg.connect(pg_dsn, autocommit=True)
    ddl = psycopg.connect(pg_dsn, autocommit=True)
    admin = psycopg.connect(pg_dsn, autocommit=True)
    threads: list[threading.Thread] = []
    box: dict[str, Any] = {}
    try:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))

        def blocked_waiter() -> None:
            try:
                waiter.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
            except psycopg.Error as exc:
                box["waiter"] = type(exc).__name__

        def build_index() -> None:
            started = time.monotonic()
            ddl.execute("CREATE INDEX CONCURRENTLY calls_sid ON calls (sid)")
            box["index_seconds"] = time.monotonic() - started

        threads.append(threading.Thread(target=blocked_waiter, daemon=True))
        threads[-1].start()
        assert wait_for(
            lambda: admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event = 'advisory'",
                (waiter.info.backend_pid,),
            ).fetchone(),
            10,
        )
        threads.append(threading.Thread(target=build_index, daemon=True))
        threads[-1].start()
        # The index build waits for the blocked waiter, which waits for the holder.
        blockers = wait_for(
            lambda: admin.execute(
                "SELECT pg_blocking_pids(%s)", (ddl.info.backend_pid,)
            ).fetchone()[0],
            10,
        )
        assert blockers == [waiter.info.backend_pid]
        time.sleep(1.0)
        assert "index_seconds" not in box  # stuck: nothing on the server will break the cycle
        admin.execute("SELECT pg_cancel_backend(%s)", (waiter.info.backend_pid,))
        threads[-1].join(30)
        assert "index_seconds" in box  # the cycle ends only because someone gave up
        assert box["waiter"] == "QueryCanceled"
    finally:
        for conn in (holder, waiter, ddl, admin):
            conn.close()
        for thread in threads:
            thread.join(10)


def test_create_index_concurrently_completes_while_processes_poll(pg_dsn: str) -> None:
    # The same index, built by an outlast leader while three more processes
    # wait the outlast way (try-lock polls and lock-free state reads).
    box: dict[str, Any] = {}
    threads = [
        _run_in_thread(box, f"p{i}", runner=migrate.SqlRunner(SQL_DIR), dsn=pg_dsn, poll=0.05)
        for i in range(4)
    ]
    for thread in threads:
        thread.join(60)
    statuses = [box[f"p{i}"] for i in range(4)]
    assert all(isinstance(s, migrate.SchemaStatus) for s in statuses), statuses
    assert sorted(rev for s in statuses for rev in s.applied) == list(SQL_REVISIONS)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'calls_sid'::regclass"
        ).fetchone()
    assert valid == (True,)
