"""outlast.psycopg: hardened psycopg 3 connections and psycopg_pool pools on a real server."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import psycopg_pool
import pytest
from conn_kit import Traffic

import outlast
from outlast._hardening import PRESETS
from outlast.psycopg import AsyncConnectionPool, ConnectionPool, aconnect, connect, connect_kwargs

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

        traffic = Traffic(request, threads=3).start()
        try:
            deadline = time.monotonic() + 30
            while traffic.successes_after(0) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            pg_control.restart()
            up_at = time.monotonic()
            deadline = up_at + 60
            while traffic.successes_after(up_at) < 30 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            traffic.stop()
    assert traffic.successes_after(up_at) >= 30
    assert traffic.stale_failures() == []
