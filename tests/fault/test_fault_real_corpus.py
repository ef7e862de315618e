"""Real faults produced by the real embedded PostgreSQL, classified per driver.

Every case makes the server (or the network) fail for real, through psycopg 3,
psycopg2, asyncpg and SQLAlchemy 2 over each of them, and checks the `Fault`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from fault_kit import DRIVERS, classify_real, connect_and_query

import outlast
from outlast import FaultKind


@pytest.fixture
def db(pg_any_database: Any) -> Iterator[Any]:
    # The embedded server, and OUTLAST_TEST_DSN's server as well when it is set.
    with psycopg.connect(pg_any_database.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int, email text UNIQUE)")
        conn.execute("INSERT INTO t VALUES (1, 0, 'one@example.com'), (2, 0, 'two@example.com')")
    yield pg_any_database


def run_for(db: Any, driver: str, **kw: Any) -> Callable[[], None]:
    server = db.server
    kw.setdefault("dbname", db.name)
    return lambda: connect_and_query(driver, server.host, server.port, **kw)


def helper(db: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(db.dsn(), autocommit=True)


def wait_for_backend(db: Any, app: str, *, waiting_on_lock: bool = False) -> int:
    """Poll pg_stat_activity (bounded) until `app`'s query is active; return its pid."""
    # Match the test's own statement, not the driver's connect-time
    # introspection queries (SQLAlchemy's dialect initialisation runs under the
    # same application_name): striking those would be a connect-phase fault.
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'" + (
        " AND wait_event_type = 'Lock'" if waiting_on_lock else " AND query ILIKE %s"
    )
    params = (app,) if waiting_on_lock else (app, "%pg_sleep%")
    deadline = time.monotonic() + 30
    with helper(db) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql, params).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.05)
    raise AssertionError(f"backend {app} never became active")


@contextmanager
def in_background(fn: Callable[[], None]) -> Iterator[None]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    yield
    thread.join(60)
    assert not thread.is_alive()
    assert not errors, errors


def app_name() -> str:
    return f"fault-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------ server answers


@pytest.mark.parametrize("driver", DRIVERS)
def test_syntax_error(db: Any, driver: str) -> None:
    fault, _ = classify_real(run_for(db, driver, steps=["SELEC 1 FROM t WHERE email = 'x-secret'"]))
    assert (fault.kind, fault.reason, fault.sqlstate, fault.phase) == (
        FaultKind.PERMANENT,
        "syntax_error",
        "42601",
        "statement",
    )
    assert not fault.transient
    assert "x-secret" not in fault.message  # no SQL text in the message


@pytest.mark.parametrize("driver", DRIVERS)
def test_undefined_table(db: Any, driver: str) -> None:
    fault, _ = classify_real(run_for(db, driver, steps=["SELECT * FROM no_such_table"]))
    assert (fault.kind, fault.reason, fault.sqlstate) == (
        FaultKind.PERMANENT,
        "undefined_table",
        "42P01",
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_unique_violation_message_has_no_value(db: Any, driver: str) -> None:
    secret = "alice.private@example.com"
    steps = [f"INSERT INTO t VALUES (3, 0, '{secret}')", f"INSERT INTO t VALUES (4, 0, '{secret}')"]
    fault, exc = classify_real(run_for(db, driver, steps=steps))
    assert (fault.kind, fault.reason, fault.sqlstate, fault.phase) == (
        FaultKind.PERMANENT,
        "unique_violation",
        "23505",
        "statement",
    )
    assert "t_email_key" in fault.message
    assert secret not in fault.message
    # redact() keeps SQL text (here the literal) but masks the DETAIL's echo of the row
    assert f"=({secret})" in str(exc) or driver == "sqlalchemy+asyncpg"
    assert f"=({secret})" not in outlast.redact(str(exc))


@pytest.mark.parametrize("driver", DRIVERS)
def test_database_does_not_exist(db: Any, driver: str) -> None:
    fault, _ = classify_real(run_for(db, driver, dbname="no_such_database_here"))
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.PERMANENT,
        "invalid_catalog",
        "connect",
    )
    assert fault.sqlstate in ("3D000", None)


@pytest.mark.parametrize("driver", DRIVERS)
def test_statement_timeout(db: Any, driver: str) -> None:
    steps = ["SET statement_timeout = 100", "SELECT pg_sleep(5)"]
    fault, _ = classify_real(run_for(db, driver, steps=steps))
    assert (fault.kind, fault.reason, fault.sqlstate, fault.phase) == (
        FaultKind.TIMEOUT,
        "statement_timeout",
        "57014",
        "statement",
    )
    assert fault.transient is False


@pytest.mark.parametrize("driver", DRIVERS)
def test_query_canceled_by_user(db: Any, driver: str) -> None:
    app = app_name()

    def cancel() -> None:
        pid = wait_for_backend(db, app)
        with helper(db) as conn:
            conn.execute("SELECT pg_cancel_backend(%s)", (pid,))

    with in_background(cancel):
        fault, _ = classify_real(
            run_for(db, driver, steps=["SELECT pg_sleep(20)"], application_name=app)
        )
    assert (fault.kind, fault.reason, fault.sqlstate) == (
        FaultKind.TIMEOUT,
        "query_canceled",
        "57014",
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_serialization_failure(db: Any, driver: str) -> None:
    def concurrent_update() -> None:
        with helper(db) as conn:
            conn.execute("UPDATE t SET v = v + 1 WHERE id = 1")

    steps = [
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SELECT v FROM t WHERE id = 1",  # takes the snapshot
        concurrent_update,
        "UPDATE t SET v = v + 1 WHERE id = 1",
    ]
    fault, _ = classify_real(run_for(db, driver, steps=steps))
    assert (fault.kind, fault.reason, fault.sqlstate, fault.phase) == (
        FaultKind.CONFLICT,
        "serialization_failure",
        "40001",
        "statement",
    )
    assert fault.transient


@pytest.mark.parametrize("driver", DRIVERS)
def test_deadlock(db: Any, driver: str) -> None:
    other = app_name()
    done = threading.Event()

    def other_side() -> None:
        with psycopg.connect(db.dsn(application_name=other)) as conn:
            conn.execute("SET deadlock_timeout = '10s'")  # we want the driver to be the victim
            conn.execute("SET lock_timeout = '30s'")
            conn.execute("UPDATE t SET v = v + 1 WHERE id = 2")
            done.set()
            conn.execute("UPDATE t SET v = v + 1 WHERE id = 1")  # blocks on the driver
            conn.commit()

    started: list[threading.Thread] = []

    def start_other() -> None:
        thread = threading.Thread(target=other_side, daemon=True)
        thread.start()
        started.append(thread)
        assert done.wait(30)
        wait_for_backend(db, other, waiting_on_lock=True)

    steps = [
        "SET deadlock_timeout = '50ms'",
        "UPDATE t SET v = v + 1 WHERE id = 1",
        start_other,
        "UPDATE t SET v = v + 1 WHERE id = 2",  # closes the cycle
    ]
    fault, _ = classify_real(run_for(db, driver, steps=steps))
    for thread in started:
        thread.join(60)
        assert not thread.is_alive()
    assert (fault.kind, fault.reason, fault.sqlstate) == (FaultKind.CONFLICT, "deadlock", "40P01")
    assert fault.transient


@pytest.mark.parametrize("driver", DRIVERS)
def test_lock_not_available(db: Any, driver: str) -> None:
    with psycopg.connect(db.dsn()) as holder:
        holder.execute("SELECT * FROM t WHERE id = 1 FOR UPDATE")  # held until the block ends
        fault, _ = classify_real(
            run_for(db, driver, steps=["SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT"])
        )
        fault2, _ = classify_real(
            run_for(db, driver, steps=["SET lock_timeout = 50", "UPDATE t SET v = 5 WHERE id = 1"])
        )
    for f in (fault, fault2):
        assert (f.kind, f.reason, f.sqlstate) == (FaultKind.CONFLICT, "lock_not_available", "55P03")


@pytest.mark.parametrize("driver", DRIVERS)
def test_read_only_transaction(db: Any, driver: str) -> None:
    steps = ["SET TRANSACTION READ ONLY", "UPDATE t SET v = 1 WHERE id = 1"]
    fault, _ = classify_real(run_for(db, driver, steps=steps))
    assert (fault.kind, fault.reason, fault.sqlstate, fault.phase) == (
        FaultKind.READ_ONLY,
        "read_only_transaction",
        "25006",
        "statement",
    )
    assert fault.transient


@pytest.mark.parametrize("driver", DRIVERS)
def test_too_many_connections_for_role(db: Any, driver: str) -> None:
    role = f"fault_lim_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with helper(db) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
        try:
            server = db.server
            with psycopg.connect(host=server.host, port=server.port, user=role, dbname=db.name):
                fault, _ = classify_real(run_for(db, driver, user=role))
        finally:
            admin.execute(f"DROP ROLE {role}")
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.UNAVAILABLE,
        "too_many_connections",
        "connect",
    )
    assert fault.sqlstate in ("53300", None)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("during_commit", [False, True])
def test_backend_terminated_mid_query(db: Any, driver: str, during_commit: bool) -> None:
    app = app_name()

    def terminate() -> None:
        pid = wait_for_backend(db, app)
        with helper(db) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with in_background(terminate):
        fault, _ = classify_real(
            run_for(db, driver, steps=["SELECT pg_sleep(20)"], application_name=app),
            during_commit=during_commit,
        )
    # psycopg2 (libpq) may report only "server closed the connection unexpectedly"
    expected = (
        {"admin_shutdown"}
        if driver in ("psycopg", "asyncpg")
        else {
            "admin_shutdown",
            "connection_lost",
        }
    )
    assert fault.reason in expected
    if during_commit:
        assert (fault.kind, fault.phase, fault.transient) == (
            FaultKind.COMMIT_UNKNOWN,
            "commit",
            False,
        )
    else:
        assert (fault.kind, fault.phase, fault.transient) == (
            FaultKind.UNAVAILABLE,
            "statement",
            True,
        )


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg", "sqlalchemy+psycopg"])
def test_idle_in_transaction_timeout(db: Any, driver: str) -> None:
    steps = [
        "SET idle_in_transaction_session_timeout = 200",
        "SELECT 1",
        lambda: time.sleep(1.5),
        "SELECT 2",
    ]
    fault, exc = classify_real(run_for(db, driver, steps=steps))
    if "idle-in-transaction" in str(exc) or getattr(exc, "sqlstate", None) == "25P03":
        assert (fault.kind, fault.reason) == (FaultKind.TIMEOUT, "idle_in_transaction_timeout")
    else:  # psycopg2/libpq only reports "server closed the connection unexpectedly"
        assert driver == "psycopg2"
        assert (fault.kind, fault.reason) == (FaultKind.UNAVAILABLE, "connection_lost")


def test_asyncpg_client_side_command_timeout(db: Any) -> None:
    import asyncpg

    async def main() -> None:
        conn = await asyncpg.connect(
            host=db.server.host, port=db.server.port, user=db.server.user, database=db.name
        )
        try:
            await conn.execute("SELECT pg_sleep(5)", timeout=0.2)
        finally:
            await conn.close()

    fault, _ = classify_real(lambda: asyncio.run(main()))
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.TIMEOUT,
        "client_timeout",
        "statement",
    )
    fault2, _ = classify_real(lambda: asyncio.run(main()), during_commit=True)
    assert fault2.kind is FaultKind.COMMIT_UNKNOWN


# ------------------------------------------------------- destructive (server)


@pytest.mark.destructive
@pytest.mark.parametrize("driver", DRIVERS)
def test_connection_refused_server_stopped(pg_control: Any, driver: str) -> None:
    pg_control.stop()
    fault, _ = classify_real(
        lambda: connect_and_query(driver, pg_control.host, pg_control.port, timeout=3)
    )
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.UNAVAILABLE,
        "connection_refused",
        "connect",
    )


@pytest.mark.destructive
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg", "sqlalchemy+psycopg"])
def test_server_killed_mid_query(pg_control: Any, driver: str) -> None:
    app = app_name()

    def kill() -> None:
        with psycopg.connect(pg_control.dsn(), autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                    "AND state = 'active' AND query ILIKE %s",
                    (app, "%pg_sleep%"),
                ).fetchone()
                if row is not None:
                    break
                time.sleep(0.05)
        pg_control.kill()

    with in_background(kill):
        fault, _ = classify_real(
            lambda: connect_and_query(
                driver,
                pg_control.host,
                pg_control.port,
                steps=["SELECT pg_sleep(20)"],
                application_name=app,
            )
        )
    assert fault.kind is FaultKind.UNAVAILABLE
    assert fault.reason in ("connection_lost", "crash_shutdown", "admin_shutdown")
    assert fault.phase == "statement"


@pytest.mark.destructive
@pytest.mark.parametrize("driver", DRIVERS)
def test_password_authentication_failed(pg_control: Any, driver: str) -> None:
    """A real 28P01: a role with a password and a pg_hba.conf that requires it."""
    role = f"fault_pw_{os.getpid()}"
    hba = pg_control.base_dir / "fault_hba.conf"
    hba.write_text(
        f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        "host all all 127.0.0.1/32 trust\nlocal all all trust\n"
    )
    hba.chmod(0o644)
    with psycopg.connect(pg_control.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
    try:
        pg_control.configure(hba_file=str(hba))
        fault, _ = classify_real(
            lambda: connect_and_query(
                driver, pg_control.host, pg_control.port, user=role, password="Wr0ng-pw-xyz"
            )
        )
    finally:
        pg_control.reset_configuration()
        with psycopg.connect(pg_control.dsn(), autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.PERMANENT,
        "auth_failed",
        "connect",
    )
    assert fault.sqlstate in ("28P01", None)
    assert "Wr0ng-pw-xyz" not in fault.message


@pytest.mark.destructive
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_too_many_connections_max_connections(pg_control: Any, driver: str) -> None:
    pg_control.configure(
        max_connections=3, superuser_reserved_connections=0, reserved_connections=0
    )
    held: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(10):  # fill every slot (bounded)
            try:
                held.append(psycopg.connect(pg_control.dsn(), connect_timeout=5))
            except psycopg.OperationalError:
                break
        fault, _ = classify_real(
            lambda: connect_and_query(driver, pg_control.host, pg_control.port)
        )
    finally:
        for conn in held:
            conn.close()
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.UNAVAILABLE,
        "too_many_connections",
        "connect",
    )
