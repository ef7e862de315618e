"""outlast.asyncpg: hardened asyncpg connections and pools on a real server."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import asyncpg
import pytest

import outlast
from outlast._core.connections.hardening import PRESETS
from outlast.asyncpg import HardenedConnection, connect, connect_kwargs, create_pool

SLACK = 1.5


def test_connect_kwargs() -> None:
    params, preset = connect_kwargs("postgresql://app@db/app")
    assert params["timeout"] == 3.0
    assert params["command_timeout"] == 32.0  # statement_timeout + grace
    assert params["server_settings"]["statement_timeout"] == "30000"
    params, preset = connect_kwargs("postgresql://app@ep-a-pooler.neon.tech/app")
    assert "statement_timeout" not in params["server_settings"]
    with pytest.raises(outlast.ConfigurationError, match="rejects startup parameters"):
        connect_kwargs(
            "postgresql://app@db/app",
            preset="pgbouncer",
            kwargs={"server_settings": {"statement_timeout": "1000"}},
        )
    with pytest.raises(outlast.ConfigurationError) as info:
        connect_kwargs("postgresql://app:hunter2@db:port/app")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("preset", ["default", "pgbouncer"])
async def test_pool_applies_settings_and_socket_options(pg_database: Any, preset: str) -> None:
    async with create_pool(
        pg_database.url(driver=None), preset=preset, min_size=1, max_size=2
    ) as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "30s"
            sock = conn._con._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


async def test_connect_applies_settings(pg_database: Any) -> None:
    conn = await connect(pg_database.url(driver=None), preset="pgbouncer")
    try:
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
    finally:
        await conn.close()


async def test_a_read_only_fault_expires_every_pooled_connection(pg_database: Any) -> None:
    # 25006 after a failover: the old primary still answers, read-only. asyncpg
    # would keep every connection to it; outlast expires them all.
    guard = outlast.Guard("asyncpg-pool")
    async with create_pool(
        pg_database.url(driver=None), guard=guard, min_size=2, max_size=2
    ) as pool:
        async with pool.acquire() as a, pool.acquire() as b:
            pids = {a.get_server_pid(), b.get_server_pid()}
            generation = pool._generation
            await a.execute("SET default_transaction_read_only = on")
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await a.execute("CREATE TABLE t (x int)")
        for _ in range(100):  # the expiry runs as a task
            if pool._generation > generation:
                break
            await asyncio.sleep(0.05)
        assert pool._generation > generation
        async with pool.acquire() as a, pool.acquire() as b:
            assert {a.get_server_pid(), b.get_server_pid()}.isdisjoint(pids)
        assert guard.state.last_fault is not None
        assert guard.state.last_fault.sqlstate == "25006"


@pytest.mark.parametrize("kind", ["blackhole", "freeze"])
async def test_pool_fails_fast_on_a_dead_link(
    pg_proxy: Any, pg_database: Any, db_outage: Any, kind: str
) -> None:
    guard = outlast.Guard("asyncpg-pool")
    async with create_pool(
        pg_proxy.url(pg_database.name, driver=None), guard=guard, min_size=1, max_size=2
    ) as pool:
        await pool.fetchval("SELECT 1")
        with db_outage(kind):
            start = time.monotonic()
            with pytest.raises(Exception) as info:  # noqa: PT011 - classified below
                await pool.fetchval("SELECT 1")
            elapsed = time.monotonic() - start
        print(f"asyncpg pool {kind}: failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE, info.value
        assert elapsed < PRESETS["default"].ping_timeout + SLACK
        assert not guard.state.up
        # The next request gets a fresh connection attempt, bounded by the connect timeout.
        with db_outage(kind):
            start = time.monotonic()
            with pytest.raises((OSError, asyncio.TimeoutError)):
                await pool.fetchval("SELECT 1")
            assert time.monotonic() - start < PRESETS["default"].connect_timeout + SLACK


async def _wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "in_flight"])
async def test_a_terminated_connection_reaches_the_guard_and_expires_the_pool(
    pg_proxy: Any, pg_database: Any, db_outage: Any, busy: bool
) -> None:
    # The proxy sends FATAL 57P01 on every connection and closes it, as a
    # server shutdown does; asyncpg drops its query loggers before they see it.
    guard = outlast.Guard("asyncpg-terminate")
    async with create_pool(
        pg_proxy.url(pg_database.name, driver=None), guard=guard, min_size=2, max_size=2
    ) as pool:
        async with pool.acquire() as a, pool.acquire() as b:
            assert isinstance(a._con, HardenedConnection)
            await a.fetchval("SELECT 1")
            await b.fetchval("SELECT 1")
        generation = pool._generation
        async with pool.acquire() as conn:
            query = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(5)")) if busy else None
            await asyncio.sleep(0.2 if busy else 0)  # let the query reach the server
            with db_outage("terminate"):
                assert await _wait_for(lambda: guard.state.last_fault is not None)
                if query is not None:
                    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
                        await query
        fault = guard.state.last_fault
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE
        assert guard.state.failures >= 1  # (new connections work: the Guard may be up again)
        assert await _wait_for(lambda: pool._generation > generation)  # expired as a task
        assert await pool.fetchval("SELECT 1") == 1  # fresh connections afterwards


async def test_closing_and_retiring_connections_is_not_a_fault(pg_database: Any) -> None:
    guard = outlast.Guard("asyncpg-quiet")
    pool = create_pool(pg_database.url(driver=None), guard=guard, min_size=2, max_size=2)
    async with pool:
        assert await pool.fetchval("SELECT 1") == 1
        await pool.expire_connections()  # every connection is closed on its next acquire
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        single = await connect(pg_database.url(driver=None), guard=guard)
        await single.close()
    for _ in range(3):  # termination listeners run as call_soon callbacks: let them
        await asyncio.sleep(0)
    assert guard.state.up
    assert guard.state.last_fault is None


# ------------------------------------------------------------ max lifetime

# Lifetimes between 0.5 s and 1 s (jitter shortens, never lengthens).
SHORT_LIFE = PRESETS["default"].replace(max_lifetime=1.0, max_lifetime_jitter=0.5)


@pytest.mark.parametrize("in_use", [False, True], ids=["idle", "in_use"])
async def test_pool_renews_a_connection_after_its_max_lifetime(
    pg_database: Any, in_use: bool
) -> None:
    guard = outlast.Guard("asyncpg-lifetime")
    async with create_pool(
        pg_database.url(driver=None),
        guard=guard,
        preset=SHORT_LIFE,
        min_size=1,
        max_size=1,
        max_inactive_connection_lifetime=0,  # only the lifetime retires connections here
    ) as pool:
        async with pool.acquire() as conn:
            first = conn.get_server_pid()
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == first  # young: kept
            if in_use:
                await asyncio.sleep(1.2)
                # Never cut under its user: it is retired when it comes back.
                assert await conn.fetchval("SELECT 1") == 1
        if not in_use:
            await asyncio.sleep(1.2)
        async with pool.acquire() as conn:
            assert conn.get_server_pid() != first
            alive = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", first
            )
        assert alive == 0  # the old session was closed, not leaked
    assert guard.state.up and guard.state.last_fault is None  # renewal is not a fault


async def test_lifetimes_are_jittered_per_connection(pg_database: Any) -> None:
    # 1 s to 2 s each; measured on the server (backend start to disappearance),
    # so how long the pool took to open them does not count.
    preset = PRESETS["default"].replace(max_lifetime=2.0, max_lifetime_jitter=0.5)
    watcher = await asyncpg.connect(pg_database.url(driver=None))
    try:
        async with create_pool(
            pg_database.url(driver=None),
            preset=preset,
            min_size=5,
            max_size=5,
            max_inactive_connection_lifetime=0,
        ) as pool:
            held = [await pool.acquire() for _ in range(5)]
            pids = [conn.get_server_pid() for conn in held]
            for conn in held:
                await pool.release(conn)
            started = dict(
                await watcher.fetch(
                    "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = ANY($1)", pids
                )
            )
            gone: dict[int, float] = {}
            deadline = time.monotonic() + 5.0
            while len(gone) < len(pids) and time.monotonic() < deadline:
                row = await watcher.fetchrow(
                    "SELECT clock_timestamp() AS now, array_agg(pid) AS alive"
                    " FROM pg_stat_activity WHERE pid = ANY($1)",
                    pids,
                )
                for pid in set(pids) - set(row["alive"] or ()) - set(gone):
                    gone[pid] = (row["now"] - started[pid]).total_seconds()
                await asyncio.sleep(0.02)
    finally:
        await watcher.close()
    lifetimes = sorted(gone.values())
    print("asyncpg lifetimes:", ", ".join(f"{t:.2f}" for t in lifetimes))
    assert len(lifetimes) == 5
    assert all(1.0 - 0.1 <= t <= 2.0 + SLACK for t in lifetimes)
    assert lifetimes[-1] - lifetimes[0] > 0.1  # not all renewed at the same moment
