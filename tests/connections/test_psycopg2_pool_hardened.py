"""outlast.psycopg2.ConnectionPool: no leaked slots, no dead connections, a checkout timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extras
import psycopg2.pool
import pytest
from conn_kit import Hang

import outlast
from outlast._core.connections.hardening import PRESETS
from outlast.psycopg2 import ConnectionPool, HardenedConnection, PoolTimeout, connect


def test_connect_applies_the_session_settings(pg_database: Any) -> None:
    conn = connect(pg_database.dsn(), preset="pgbouncer")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("30s",)
    finally:
        conn.close()


def test_a_broken_connection_given_back_frees_its_slot(pg_database: Any) -> None:
    with ConnectionPool(pg_database.dsn(), max_size=1, timeout=2) as pool:
        conn = pool.getconn()
        pid = conn.get_backend_pid()
        pg_database.psql(f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
        assert conn.closed == 2  # libpq saw the link die
        pool.putconn(conn)
        assert pool.size == 0  # discarded, slot free
        again = pool.getconn()  # psycopg2's own pool would now be exhausted for ever
        assert again.get_backend_pid() != pid
        pool.putconn(again)


def test_a_connection_that_died_while_idle_is_replaced_on_getconn(pg_database: Any) -> None:
    guard = outlast.Guard("psycopg2-pool")
    with ConnectionPool(pg_database.dsn(), guard=guard, max_size=1) as pool:
        with pool.connection() as conn:
            pid = conn.get_backend_pid()
        pg_database.psql(f"SELECT pg_terminate_backend({pid})")
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None and row[0] != pid
        assert pool.size == 1


def test_an_exhausted_pool_waits_then_times_out(pg_database: Any) -> None:
    with ConnectionPool(pg_database.dsn(), max_size=1, timeout=0.5) as pool:
        held = pool.getconn()
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn()
        assert time.monotonic() - start >= 0.45
        assert issubclass(PoolTimeout, psycopg2.pool.PoolError)

        # A waiter gets the connection as soon as it is given back.
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=30)))
        waiter.start()
        time.sleep(0.2)
        pool.putconn(held)
        waiter.join(timeout=30)
        assert got == [held]
        pool.putconn(held)


def test_connection_context_rolls_back_and_returns_on_error(pg_database: Any) -> None:
    with ConnectionPool(pg_database.dsn(), max_size=1) as pool:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int)")
        with pytest.raises(ZeroDivisionError), pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (1)")
            raise ZeroDivisionError
        assert pool.idle == 1
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchone() == (0,)


def test_a_transaction_left_open_is_rolled_back_on_putconn(pg_database: Any) -> None:
    with ConnectionPool(pg_database.dsn(), max_size=1) as pool:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE leak (x int)")
        pool.putconn(conn)  # not committed
        again = pool.getconn()
        assert again is conn
        assert again.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        with again.cursor() as cur:
            cur.execute("SELECT to_regclass('pg_temp.leak')")
            assert cur.fetchone() == (None,)
        pool.putconn(again)


def test_foreign_connections_and_bad_sizes_are_refused(pg_database: Any) -> None:
    with pytest.raises(outlast.ConfigurationError):
        ConnectionPool(pg_database.dsn(), max_size=0)
    with pytest.raises(outlast.ConfigurationError):
        ConnectionPool(pg_database.dsn(), min_size=3, max_size=2)
    with ConnectionPool(pg_database.dsn(), max_size=1) as pool:
        stranger = psycopg2.connect(pg_database.dsn())
        try:
            with pytest.raises(psycopg2.pool.PoolError):
                pool.putconn(stranger)
        finally:
            stranger.close()


def test_ping_on_a_frozen_link_is_bounded(pg_proxy: Any, pg_database: Any, db_outage: Any) -> None:
    guard = outlast.Guard("psycopg2-frozen")
    with ConnectionPool(pg_proxy.dsn(pg_database.name), guard=guard, max_size=2) as pool:
        with pool.connection():
            pass
        with db_outage("freeze"):
            start = time.monotonic()
            with pytest.raises(psycopg2.OperationalError) as info:
                pool.getconn()
            elapsed = time.monotonic() - start
        print(f"psycopg2 pool freeze: failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE
        assert elapsed < pool.hardening.check_budget + 1.5
        assert pool.size == 0  # the frozen connection was dropped, no slot leaked
        assert not guard.state.up


# A statement deadline of 2 s (server 1 s + grace 1 s) keeps these tests short.
FAST = PRESETS["default"].replace(statement_timeout=1.0, deadline_grace=1.0)
SLACK = 1.5


def _bounded_call(call: Callable[[], object], step: str) -> tuple[BaseException | None, float]:
    """Run a blocking driver call in a thread; its error and duration (fails if it hangs)."""
    start = time.monotonic()
    hang = Hang(call)
    assert hang.done.wait(60), f"{step} still hanging after 60 s: no client-side deadline"
    return hang.error, time.monotonic() - start


@pytest.mark.parametrize("kind", ["freeze", "blackhole"])
@pytest.mark.parametrize("step", ["execute", "commit"])
def test_a_query_on_a_checked_out_connection_hits_the_deadline(
    pg_proxy: Any, pg_database: Any, db_outage: Any, step: str, kind: str
) -> None:
    guard = outlast.Guard("psycopg2-deadline")
    with ConnectionPool(
        pg_proxy.dsn(pg_database.name), guard=guard, preset=FAST, max_size=1
    ) as pool:
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")  # checked out, working, inside a transaction
                with db_outage(kind):
                    steps = {"execute": lambda: cur.execute("SELECT 1"), "commit": conn.commit}
                    error, elapsed = _bounded_call(steps[step], step)
        print(f"psycopg2 pool, {step} after checkout, {kind}: failed after {elapsed:.2f} s")
        assert isinstance(error, psycopg2.OperationalError), error
        fault = outlast.classify(error)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE
        assert 1.5 < elapsed < FAST.client_statement_timeout + SLACK  # type: ignore[operator]
        assert not guard.state.up
        assert conn.closed
        assert pool.size == 0  # discarded, its slot free
        with pool.connection() as again, again.cursor() as cur:
            assert again is not conn
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


def test_connect_bounds_every_cursor_factory(
    pg_proxy: Any, pg_database: Any, db_outage: Any
) -> None:
    conn = connect(
        pg_proxy.dsn(pg_database.name),
        preset=FAST,
        cursor_factory=psycopg2.extras.RealDictCursor,
    )
    try:
        assert isinstance(conn, HardenedConnection)
        with conn.cursor() as cur:
            cur.execute("SELECT 1 AS x")
            assert cur.fetchone() == {"x": 1}
            with db_outage("freeze"):
                error, elapsed = _bounded_call(lambda: cur.execute("SELECT 2 AS x"), "execute")
        assert isinstance(error, psycopg2.OperationalError), error
        assert 1.5 < elapsed < FAST.client_statement_timeout + SLACK  # type: ignore[operator]
    finally:
        conn.close()


def test_guard_transaction_accepts_the_pool(pg_database: Any) -> None:
    guard = outlast.Guard("psycopg2-tx")
    with ConnectionPool(pg_database.dsn(), guard=guard, max_size=2) as pool:

        def create(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE tx (x int)")
                cur.execute("INSERT INTO tx VALUES (42)")

        guard.transaction(pool, create)
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM tx")
            assert cur.fetchall() == [(42,)]
        assert pool.size <= 2
