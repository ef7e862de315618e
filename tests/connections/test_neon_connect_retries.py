"""The ``neon`` preset retries logins refused while a compute wakes up, in every pool.

The chaos proxy answers each StartupMessage with a real ``ErrorResponse``
(``reject_login``): FATAL 57P03 "the database system is starting up" for
about a second, as a Neon compute does while it wakes; or Neon's "endpoint is
disabled", which no wait can fix. Every way of connecting is tried: SQLAlchemy
sync and async engines, psycopg pools, the psycopg2 pool, the asyncpg pool
and single connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack, ExitStack
from typing import Any

import psycopg
import psycopg_pool
import pytest
import sqlalchemy as sa

import outlast
from outlast._core.connections.connect_retry import CONNECT_BACKOFF, next_delay
from outlast._core.connections.hardening import PRESETS, Hardening
from outlast.asyncpg import create_pool
from outlast.psycopg import AsyncConnectionPool, ConnectionPool
from outlast.psycopg import connect as psycopg_connect
from outlast.psycopg2 import ConnectionPool as Psycopg2Pool
from outlast.sqlalchemy import create_async_engine, create_engine

WAKE = 1.0  # how long the "compute" refuses logins
AT_ONCE = 0.5  # a failure without retries, on a loaded 2-core machine
SLACK = 1.5
SELECT_1 = sa.text("SELECT 1")
NEON = PRESETS["neon"]
DEFAULT = PRESETS["default"]


# ------------------------------------------------------------ pure logic


def _refused(message: str) -> Exception:
    # How libpq reports a refused login: no SQLSTATE, only the server's text.
    return psycopg.OperationalError(f"connection failed: {message}")


def test_only_transient_connect_faults_are_retried() -> None:
    starting = _refused("FATAL:  the database system is starting up")
    disabled = _refused("ERROR:  Control plane request failed: endpoint is disabled")
    password = _refused('FATAL:  password authentication failed for user "app"')
    compute = _refused("ERROR:  Couldn't connect to compute node")
    for error in (starting, compute):
        delay = next_delay(NEON, 0, 0.0, error, 0.0)
        assert delay == CONNECT_BACKOFF.initial
    for error in (disabled, password, ValueError("a bug")):
        assert next_delay(NEON, 0, 0.0, error, 0.0) is None
    assert next_delay(DEFAULT, 0, 0.0, starting, 0.0) is None  # no retries by default
    assert next_delay(NEON, NEON.connect_retries, 0.0, starting, 0.0) is None
    assert next_delay(NEON, 3, NEON.connect_retry_budget - 0.01, starting, 0.0) is None
    unavailable = outlast.DatabaseUnavailable("breaker open", retry_after=1.0)
    assert next_delay(NEON, 0, 0.0, unavailable, 0.0) is None


def test_connect_retry_options_are_validated() -> None:
    assert NEON.connect_retries > 0 and DEFAULT.connect_retries == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(outlast.ConfigurationError, match="connect_retries"):
            Hardening(connect_retries=bad)  # type: ignore[arg-type]
    with pytest.raises(outlast.ConfigurationError, match="connect_retry_budget"):
        Hardening(connect_retry_budget=-1)


# ------------------------------------------------------------ every factory

# Each opener connects through `dsn`/`url` with a preset and runs SELECT 1,
# closing what it opened; it raises the driver's (or pool's) error.
SyncOpener = Callable[[Any, Any, Hardening, outlast.Guard], None]
AsyncOpener = Callable[[Any, Any, Hardening, outlast.Guard], Coroutine[Any, Any, None]]


def _sa_sync(driver: str) -> SyncOpener:
    def open_(proxy: Any, db: Any, preset: Hardening, guard: outlast.Guard) -> None:
        engine = create_engine(proxy.url(db.name, driver=driver), preset=preset, guard=guard)
        try:
            with engine.connect() as conn:
                assert conn.execute(SELECT_1).scalar() == 1
        finally:
            engine.dispose()

    return open_


def _psycopg2_pool(proxy: Any, db: Any, preset: Hardening, guard: outlast.Guard) -> None:
    with Psycopg2Pool(proxy.dsn(db.name), preset=preset, guard=guard, max_size=1) as pool:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


def _psycopg_connect(proxy: Any, db: Any, preset: Hardening, guard: outlast.Guard) -> None:
    with psycopg_connect(proxy.dsn(db.name), preset=preset, guard=guard) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


SYNC: dict[str, SyncOpener] = {
    "sqlalchemy+psycopg": _sa_sync("psycopg"),
    "sqlalchemy+psycopg2": _sa_sync("psycopg2"),
    "psycopg2 pool": _psycopg2_pool,
    "psycopg connect": _psycopg_connect,
}


def _sa_async(driver: str) -> AsyncOpener:
    async def open_(proxy: Any, db: Any, preset: Hardening, guard: outlast.Guard) -> None:
        engine = create_async_engine(proxy.url(db.name, driver=driver), preset=preset, guard=guard)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(SELECT_1)).scalar() == 1
        finally:
            await engine.dispose()

    return open_


async def _asyncpg_pool(proxy: Any, db: Any, preset: Hardening, guard: outlast.Guard) -> None:
    url = proxy.url(db.name, driver=None)
    async with create_pool(url, preset=preset, guard=guard, min_size=0, max_size=1) as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1


ASYNC: dict[str, AsyncOpener] = {
    "sqlalchemy+asyncpg": _sa_async("asyncpg"),
    "sqlalchemy+psycopg (async)": _sa_async("psycopg"),
    "asyncpg pool": _asyncpg_pool,
}


def _connections(proxy: Any) -> int:
    return int(proxy.stats()["total_connections"])


def _check_woke(proxy: Any, before: int, elapsed: float, guard: outlast.Guard) -> None:
    # The first login was refused at once: getting in took waiting for the
    # wake-up, and several logins.
    assert WAKE - 0.1 <= elapsed < WAKE + CONNECT_BACKOFF.cap + SLACK
    assert _connections(proxy) - before >= 3
    assert guard.state.up and guard.state.outages == 0  # a cold start is no outage


@pytest.mark.parametrize("name", sorted(SYNC))
def test_neon_rides_out_a_wake_up(pg_proxy: Any, pg_database: Any, name: str) -> None:
    guard = outlast.Guard("neon")
    before = _connections(pg_proxy)
    pg_proxy.add_fault("reject_login", duration=WAKE, preset="starting_up")
    start = time.monotonic()
    SYNC[name](pg_proxy, pg_database, NEON, guard)
    elapsed = time.monotonic() - start
    print(f"{name}: neon connected after {elapsed:.2f} s")
    _check_woke(pg_proxy, before, elapsed, guard)


@pytest.mark.parametrize("name", sorted(ASYNC))
async def test_neon_rides_out_a_wake_up_async(pg_proxy: Any, pg_database: Any, name: str) -> None:
    guard = outlast.Guard("neon")
    before = _connections(pg_proxy)
    pg_proxy.add_fault("reject_login", duration=WAKE, preset="starting_up")
    start = time.monotonic()
    await ASYNC[name](pg_proxy, pg_database, NEON, guard)
    elapsed = time.monotonic() - start
    print(f"{name}: neon connected after {elapsed:.2f} s")
    _check_woke(pg_proxy, before, elapsed, guard)


def _check_refused_once(
    proxy: Any, before: int, elapsed: float, error: BaseException, reason: str
) -> None:
    fault = outlast.classify(error)
    print(f"refused ({reason}) after {elapsed:.3f} s")
    assert fault is not None and fault.reason == reason, error
    assert elapsed < AT_ONCE
    assert _connections(proxy) - before == 1  # one login, no retry


# The contrast and the faults that waiting cannot fix: one login, an error at once.
REFUSALS = [
    ("default", "starting_up", "starting_up"),
    ("neon", "neon_endpoint_disabled", "endpoint_disabled"),
]


@pytest.mark.parametrize(("preset", "login", "reason"), REFUSALS)
@pytest.mark.parametrize("name", sorted(SYNC))
def test_no_retry_without_neon_or_for_a_disabled_endpoint(
    pg_proxy: Any, pg_database: Any, name: str, preset: str, login: str, reason: str
) -> None:
    before = _connections(pg_proxy)
    pg_proxy.add_fault("reject_login", preset=login)
    start = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011 - classified below
        SYNC[name](pg_proxy, pg_database, PRESETS[preset], outlast.Guard("x"))
    _check_refused_once(pg_proxy, before, time.monotonic() - start, info.value, reason)


@pytest.mark.parametrize(("preset", "login", "reason"), REFUSALS)
@pytest.mark.parametrize("name", sorted(ASYNC))
async def test_no_retry_without_neon_or_for_a_disabled_endpoint_async(
    pg_proxy: Any, pg_database: Any, name: str, preset: str, login: str, reason: str
) -> None:
    before = _connections(pg_proxy)
    pg_proxy.add_fault("reject_login", preset=login)
    start = time.monotonic()
    with pytest.raises(Exception) as info:  # noqa: PT011 - classified below
        await ASYNC[name](pg_proxy, pg_database, PRESETS[preset], outlast.Guard("x"))
    _check_refused_once(pg_proxy, before, time.monotonic() - start, info.value, reason)


# ------------------------------------------------------------ psycopg_pool
#
# psycopg_pool connects in a background worker and, when a connect fails,
# tries again itself after about 1 s, 2 s, 4 s ... while a checkout waits for
# its timeout. The neon preset's retries happen inside each of those
# connects: the pool sees one connect, and it succeeds.


def test_psycopg_pool_connects_through_a_wake_up(pg_proxy: Any, pg_database: Any) -> None:
    pg_proxy.add_fault("reject_login", duration=WAKE, preset="starting_up")
    start = time.monotonic()
    with ConnectionPool(
        pg_proxy.dsn(pg_database.name), preset=NEON, min_size=1, max_size=1, open=True
    ) as pool:
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        elapsed = time.monotonic() - start
        stats = pool.get_stats()
    assert WAKE - 0.1 <= elapsed < WAKE + CONNECT_BACKOFF.cap + SLACK
    assert stats.get("connections_errors", 0) == 0 and stats["connections_num"] == 1


async def test_async_psycopg_pool_connects_through_a_wake_up(
    pg_proxy: Any, pg_database: Any
) -> None:
    pg_proxy.add_fault("reject_login", duration=WAKE, preset="starting_up")
    start = time.monotonic()
    async with AsyncConnectionPool(
        pg_proxy.dsn(pg_database.name), preset=NEON, min_size=1, max_size=1
    ) as pool:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        elapsed = time.monotonic() - start
        stats = pool.get_stats()
    assert WAKE - 0.1 <= elapsed < WAKE + CONNECT_BACKOFF.cap + SLACK
    assert stats.get("connections_errors", 0) == 0 and stats["connections_num"] == 1


@pytest.mark.parametrize(("preset", "login", "reason"), REFUSALS)
def test_psycopg_pool_connect_is_not_retried_without_neon_or_when_disabled(
    pg_proxy: Any, pg_database: Any, preset: str, login: str, reason: str
) -> None:
    pg_proxy.add_fault("reject_login", preset=login)
    before = _connections(pg_proxy)
    with ExitStack() as stack:
        pool = stack.enter_context(
            ConnectionPool(
                pg_proxy.dsn(pg_database.name),
                preset=PRESETS[preset],
                min_size=1,
                max_size=1,
                open=True,
            )
        )
        with pytest.raises(psycopg_pool.PoolTimeout):
            pool.getconn(timeout=AT_ONCE)
        stats = pool.get_stats()
    # psycopg_pool's own next try comes after ~1 s: in the meantime one login.
    assert _connections(pg_proxy) - before == 1
    assert stats["connections_errors"] == 1


async def test_async_psycopg_pool_connect_is_not_retried_for_a_disabled_endpoint(
    pg_proxy: Any, pg_database: Any
) -> None:
    pg_proxy.add_fault("reject_login", preset="neon_endpoint_disabled")
    before = _connections(pg_proxy)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            AsyncConnectionPool(pg_proxy.dsn(pg_database.name), preset=NEON, min_size=1, max_size=1)
        )
        with pytest.raises(psycopg_pool.PoolTimeout):
            await pool.getconn(timeout=AT_ONCE)
    assert _connections(pg_proxy) - before == 1
