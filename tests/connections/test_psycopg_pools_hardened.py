"""outlast.psycopg: hardened psycopg 3 connections and psycopg_pool pools on a real server."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import psycopg_pool
import pytest
from conn_kit import restart_under_traffic

import outlast
from outlast._core.connections.hardening import PRESETS
from outlast._core.timing.budget import RequestBudget
from outlast.psycopg import (
    AsyncConnectionPool,
    ConnectionPool,
    HardenedConnection,
    aconnect,
    connect,
    connect_kwargs,
)

SLACK = 1.5


def test_connect_kwargs_merge_and_validate() -> None:
    params, preset = connect_kwargs("host=db dbname=app connect_timeout=9")
    assert "connect_timeout" not in params  # the conninfo's own value wins
    assert params["tcp_user_timeout"] == "10000"
    assert preset == PRESETS["default"]
    params, preset = connect_kwargs(
        "postgresql://app:pw@ep-a-b-pooler.neon.tech/app", preset="neon"
    )
    assert "options" not in params and not preset.startup_options
    with pytest.raises(outlast.ConfigurationError) as info:
        connect_kwargs("postgresql://app:hunter2@db:99999/app")
    assert "hunter2" not in str(info.value)
    with pytest.raises(outlast.ConfigurationError, match="rejects startup options"):
        connect_kwargs("host=db options='-c statement_timeout=1000'", preset="pgbouncer")


@pytest.mark.parametrize("preset", ["default", "pgbouncer"])
def test_connect_applies_the_session_settings(pg_database: Any, preset: str) -> None:
    with connect(pg_database.dsn(), preset=preset) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        conn.rollback()
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)


async def test_aconnect_applies_the_session_settings(pg_database: Any) -> None:
    conn = await aconnect(pg_database.dsn(), preset="pgbouncer")
    async with conn:
        cur = await conn.execute("SHOW idle_in_transaction_session_timeout")
        assert await cur.fetchone() == ("1min",)


@pytest.mark.parametrize("preset", ["default", "pgbouncer"])
def test_pool_applies_settings_and_checks(pg_database: Any, preset: str) -> None:
    seen: list[str] = []
    with ConnectionPool(
        pg_database.dsn(),
        preset=preset,
        min_size=1,
        max_size=2,
        open=True,
        configure=lambda conn: seen.append("configure"),
    ) as pool:
        assert isinstance(pool, psycopg_pool.ConnectionPool)
        assert pool.timeout == PRESETS[preset].pool_timeout
        for _ in range(3):
            with pool.connection() as conn:
                assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert seen  # the caller's configure ran after ours


def test_pool_replaces_a_connection_killed_behind_its_back(pg_database: Any) -> None:
    guard = outlast.Guard("psycopg-pool")
    with ConnectionPool(pg_database.dsn(), guard=guard, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        pg_database.psql(f"SELECT pg_terminate_backend({pid})")
        with pool.connection() as conn:  # the check saw it dead and the pool replaced it
            assert conn.info.backend_pid != pid
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("kind", ["blackhole", "freeze"])
def test_pool_fails_fast_on_a_dead_link(
    pg_proxy: Any, pg_database: Any, db_outage: Any, kind: str
) -> None:
    guard = outlast.Guard("psycopg-pool")
    with ConnectionPool(
        pg_proxy.dsn(pg_database.name), guard=guard, min_size=1, max_size=2, open=True
    ) as pool:
        pool.wait(timeout=30)
        with db_outage(kind):
            start = time.monotonic()
            with pytest.raises(psycopg_pool.PoolTimeout) as info, pool.connection() as conn:
                conn.execute("SELECT 1")
            elapsed = time.monotonic() - start
        print(f"psycopg pool {kind}: failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE
        assert elapsed < PRESETS["default"].pool_timeout + SLACK
        assert not guard.state.up


@pytest.mark.parametrize("kind", ["blackhole", "freeze"])
async def test_async_pool_fails_fast_on_a_dead_link(
    pg_proxy: Any, pg_database: Any, db_outage: Any, kind: str
) -> None:
    guard = outlast.Guard("psycopg-async-pool")
    pool = AsyncConnectionPool(pg_proxy.dsn(pg_database.name), guard=guard, min_size=1, max_size=2)
    async with pool:
        await pool.wait(timeout=30)
        with db_outage(kind):
            start = time.monotonic()
            with pytest.raises(psycopg_pool.PoolTimeout):
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
            elapsed = time.monotonic() - start
        print(f"psycopg async pool {kind}: failed after {elapsed:.2f} s")
        assert elapsed < PRESETS["default"].pool_timeout + SLACK
        assert not guard.state.up


# A statement deadline of 2 s (server 1 s + grace 1 s) keeps these tests short.
FAST = PRESETS["default"].replace(statement_timeout=1.0, deadline_grace=1.0)


@pytest.mark.parametrize("kind", ["freeze", "blackhole"])
def test_a_query_on_a_checked_out_connection_hits_the_deadline(
    pg_proxy: Any, pg_database: Any, db_outage: Any, kind: str
) -> None:
    guard = outlast.Guard("psycopg-deadline")
    with ConnectionPool(
        pg_proxy.dsn(pg_database.name), guard=guard, preset=FAST, min_size=1, max_size=1, open=True
    ) as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 1")  # checked out and working before the fault
            with db_outage(kind):
                start = time.monotonic()
                with pytest.raises(psycopg.OperationalError) as info:
                    conn.execute("SELECT 1")
                elapsed = time.monotonic() - start
        print(f"psycopg pool, query after checkout, {kind}: failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE
        assert 1.5 < elapsed < FAST.client_statement_timeout + SLACK  # type: ignore[operator]
        assert not guard.state.up  # the connection reported its own fault
        assert conn.closed
        with pool.connection() as again:  # the dead one was discarded, not handed out
            assert again is not conn
            assert again.execute("SELECT 1").fetchone() == (1,)
        assert pool.get_stats().get("returns_bad", 0) >= 1


def test_the_request_budget_shortens_the_deadline(
    pg_proxy: Any, pg_database: Any, db_outage: Any
) -> None:
    budget = RequestBudget(1.0)  # what a web integration starts for every request
    with connect(pg_proxy.dsn(pg_database.name)) as conn:  # default preset: 32 s
        conn.execute("SELECT 1")
        token = budget.start()
        try:
            with db_outage("freeze"):
                start = time.monotonic()
                with pytest.raises(psycopg.OperationalError):
                    conn.execute("SELECT 1")
                elapsed = time.monotonic() - start
        finally:
            RequestBudget.finish(token)
    print(f"psycopg connect, 1 s request budget, freeze: failed after {elapsed:.2f} s")
    assert 0.5 < elapsed < 1.0 + SLACK


@pytest.mark.parametrize("kind", ["freeze", "blackhole"])
async def test_async_query_on_a_checked_out_connection_hits_the_deadline(
    pg_proxy: Any, pg_database: Any, db_outage: Any, kind: str
) -> None:
    guard = outlast.Guard("psycopg-async-deadline")
    pool = AsyncConnectionPool(
        pg_proxy.dsn(pg_database.name), guard=guard, preset=FAST, min_size=1, max_size=1
    )
    async with pool:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            with db_outage(kind):
                start = time.monotonic()
                with pytest.raises(psycopg.OperationalError) as info:
                    await conn.execute("SELECT 1")
                elapsed = time.monotonic() - start
        print(f"psycopg async pool, query after checkout, {kind}: failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE
        assert 1.5 < elapsed < FAST.client_statement_timeout + SLACK  # type: ignore[operator]
        assert not guard.state.up
        assert conn.closed
        async with pool.connection() as again:
            assert again is not conn
            cur = await again.execute("SELECT 1")
            assert await cur.fetchone() == (1,)


def test_listen_is_not_cut_by_the_statement_deadline(pg_database: Any) -> None:
    preset = FAST.replace(statement_timeout=0.3, deadline_grace=0.2)  # 0.5 s
    with (
        connect(pg_database.dsn(), preset=preset, autocommit=True) as listener,
        connect(pg_database.dsn(), autocommit=True) as sender,
    ):
        listener.execute("LISTEN outlast_test")
        later = threading.Timer(1.5, sender.execute, ("NOTIFY outlast_test, 'hi'",))
        later.start()
        try:
            got = [n.payload for n in listener.notifies(stop_after=1)]
        finally:
            later.join(timeout=30)
        assert got == ["hi"]
        assert listener.execute("SELECT 1").fetchone() == (1,)  # the link is still alive


def test_a_callers_connection_class_keeps_its_behaviour(pg_database: Any) -> None:
    class Mine(psycopg.Connection[Any]):
        marked = True

    with ConnectionPool(
        pg_database.dsn(), connection_class=Mine, min_size=1, max_size=1, open=True
    ) as pool:
        with pool.connection() as conn:
            assert isinstance(conn, Mine) and isinstance(conn, HardenedConnection)
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_single_connection_fails_fast_on_a_blackhole(
    pg_proxy: Any, pg_database: Any, db_outage: Any
) -> None:
    with db_outage("blackhole"):
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            connect(pg_proxy.dsn(pg_database.name))
        elapsed = time.monotonic() - start
    fault = outlast.classify(info.value)
    assert fault is not None and fault.reason == "connect_timeout"
    assert elapsed < PRESETS["default"].connect_timeout + SLACK


@pytest.mark.destructive
def test_pool_hands_out_no_stale_connection_after_a_restart(
    pg_control: Any, pg_database: Any
) -> None:
    with ConnectionPool(pg_database.dsn(), min_size=3, max_size=5, open=True) as pool:
        pool.wait(timeout=30)

        def request() -> None:
            with pool.connection() as conn:
                conn.execute("SELECT 1")

        seen = restart_under_traffic(pg_control, request)
    assert seen.traffic.successes_after(seen.up_at) >= 30
    assert seen.traffic.stale_failures() == []


@pytest.mark.destructive
def test_a_plain_pool_hands_out_stale_connections_after_a_restart(
    pg_control: Any, pg_database: Any
) -> None:
    # The contrast, measured the same way: psycopg_pool without a check.
    with psycopg_pool.ConnectionPool(pg_database.dsn(), min_size=3, max_size=5, open=True) as pool:
        pool.wait(timeout=30)

        def request() -> None:
            with pool.connection() as conn:
                conn.execute("SELECT 1")

        seen = restart_under_traffic(pg_control, request)
    assert seen.traffic.successes_after(seen.up_at) >= 30
    assert len(seen.traffic.stale_failures()) >= 1
