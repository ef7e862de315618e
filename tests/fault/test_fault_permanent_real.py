"""Permanent faults that used to be called outages, produced by real parts.

A pooler that rejects the startup parameters it was sent, a password it does
not accept, a TLS or authentication requirement the server cannot meet, a
statement the driver refuses to send, a pool the application already closed,
one statement over a per-statement limit: retrying cannot help and the
database is not down. Each is raised here by the real thing -- Debian's
PgBouncer (``scripts/ensure-pgbouncer``), a real TLS handshake with a
self-signed certificate (PgBouncer terminates TLS: the embedded server is
built without OpenSSL), real drivers against the embedded server -- and must
be PERMANENT: tried once, never counted, and ``outlast wait`` gives up at once
(exit 2) instead of waiting out its timeout.

Pool exhaustion is the other way round: one kind (UNAVAILABLE ``pool_timeout``,
phase ``connect``) whichever pool said it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg2
import psycopg2.pool
import psycopg_pool
import pytest
import sqlalchemy as sa
from fault_kit import capture
from tls_kit import self_signed_certificate

import outlast
import outlast.asyncpg
import outlast.psycopg
import outlast.psycopg2
import outlast.sqlalchemy
from outlast import FaultKind
from outlast.testing import PGBOUNCER_PASSWORD as PASSWORD
from outlast.testing import PgBouncer, pgbouncer_binary

K = FaultKind


def _assert_permanent(exc: BaseException, reason: str, *, phase: str = "connect") -> None:
    fault = outlast.classify(exc)
    assert fault is not None, f"not classified: {type(exc).__name__}: {exc}"
    assert (fault.kind, fault.reason, fault.phase) == (K.PERMANENT, reason, phase), fault
    assert not fault.transient
    assert PASSWORD not in fault.message


def _asyncpg_run(coro_fn: Callable[[], Any]) -> Callable[[], None]:
    return lambda: asyncio.run(coro_fn())


# ------------------------------------------------------------------- PgBouncer


def _require_pgbouncer() -> None:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)")


@pytest.fixture(scope="module")
def bouncer(pg_server: Any) -> Iterator[PgBouncer]:
    _require_pgbouncer()
    with PgBouncer((pg_server.host, pg_server.port)) as running:
        yield running


def _asyncpg_to(bouncer: PgBouncer, **kw: Any) -> Callable[[], None]:
    async def run() -> None:
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": bouncer.port,
            "user": "postgres",
            "password": PASSWORD,
            "database": "postgres",
            "timeout": 5,
        }
        params.update(kw)
        conn = await asyncpg.connect(**params)
        await conn.close()

    return _asyncpg_run(run)


def _sqlalchemy_to(url: sa.URL, **kw: Any) -> Callable[[], None]:
    def run() -> None:
        engine = sa.create_engine(url, **kw)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()

    return run


def _bouncer_url(bouncer: PgBouncer, driver: str, password: str = PASSWORD) -> sa.URL:
    return sa.URL.create(
        f"postgresql+{driver}",
        username="postgres",
        password=password,
        host="127.0.0.1",
        port=bouncer.port,
        database="postgres",
    )


STARTUP_OPTIONS = "-c statement_timeout=30000"


def test_pgbouncer_unsupported_startup_parameter(bouncer: PgBouncer) -> None:
    raisers: dict[str, Callable[[], object]] = {
        "psycopg": lambda: psycopg.connect(bouncer.dsn(options=STARTUP_OPTIONS)),
        "psycopg2": lambda: psycopg2.connect(bouncer.dsn(options=STARTUP_OPTIONS)),
        "asyncpg": _asyncpg_to(bouncer, server_settings={"statement_timeout": "30000"}),
        "sqlalchemy+psycopg": _sqlalchemy_to(
            _bouncer_url(bouncer, "psycopg"), connect_args={"options": STARTUP_OPTIONS}
        ),
        "sqlalchemy+psycopg2": _sqlalchemy_to(
            _bouncer_url(bouncer, "psycopg2"), connect_args={"options": STARTUP_OPTIONS}
        ),
    }
    for name, raiser in raisers.items():
        exc = capture(raiser)
        assert "unsupported startup parameter" in str(exc), name
        _assert_permanent(exc, "unsupported_startup_parameter")


def _counting_guard(name: str) -> tuple[outlast.Guard, list[object]]:
    events: list[object] = []
    guard = outlast.Guard(
        name,
        retry=outlast.Retry(attempts=5, backoff=outlast.Backoff(initial=0.01, cap=0.02)),
        breaker=outlast.Breaker(failure_threshold=1),
        listeners=[events.append],
    )
    return guard, events


def _tried_once(guard: outlast.Guard, events: list[object], fn: Callable[[], object]) -> None:
    calls: list[int] = []

    def attempt() -> object:
        calls.append(1)
        return fn()

    exc = capture(lambda: guard.call(attempt, idempotent=True))
    assert not isinstance(exc, outlast.DatabaseUnavailable), exc
    assert calls == [1]  # never retried
    assert guard.breaker_state == "closed" and guard.state.up
    assert not [e for e in events if type(e).__name__ in ("DatabaseDown", "BreakerOpened")]


def test_the_default_preset_behind_pgbouncer_fails_once_and_counts_nothing(
    bouncer: PgBouncer,
) -> None:
    """What a user on PgBouncer (not on port 6432) gets without preset="pgbouncer"."""
    guard, events = _counting_guard("bouncer-default")
    engine = outlast.sqlalchemy.create_engine(_bouncer_url(bouncer, "psycopg"), guard=guard)

    def query() -> object:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar()

    try:
        _tried_once(guard, events, query)
    finally:
        engine.dispose()

    aguard, aevents = _counting_guard("bouncer-default-asyncpg")

    async def apool() -> None:
        url = f"postgresql://postgres@127.0.0.1:{bouncer.port}/postgres"
        calls: list[int] = []

        async def attempt() -> object:
            calls.append(1)
            conn = await outlast.asyncpg.connect(url, guard=aguard, password=PASSWORD)
            await conn.close()
            return None

        with pytest.raises(asyncpg.ProtocolViolationError) as raised:
            await aguard.acall(attempt, idempotent=True)
        _assert_permanent(raised.value, "unsupported_startup_parameter")
        assert calls == [1]

    asyncio.run(apool())
    assert aguard.breaker_state == "closed" and aguard.state.up


def test_pgbouncer_wrong_password(bouncer: PgBouncer) -> None:
    raisers: dict[str, Callable[[], object]] = {
        "asyncpg": _asyncpg_to(bouncer, password="wrong-" + PASSWORD),
        "sqlalchemy+asyncpg": lambda: asyncio.run(_async_engine_connect(bouncer, "wrong")),
        "psycopg": lambda: psycopg.connect(bouncer.dsn(password="wrong")),
        "psycopg2": lambda: psycopg2.connect(bouncer.dsn(password="wrong")),
    }
    for name, raiser in raisers.items():
        exc = capture(raiser)
        if "asyncpg" in name:  # PgBouncer's own 08P01, which asyncpg keeps
            assert outlast.classify(exc).sqlstate == "08P01", name  # type: ignore[union-attr]
        _assert_permanent(exc, "auth_failed")


async def _async_engine_connect(bouncer: PgBouncer, password: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(_bouncer_url(bouncer, "asyncpg", password))
    try:
        async with engine.connect():
            pass
    finally:
        await engine.dispose()


# ------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_bouncer(pg_server: Any) -> Iterator[tuple[PgBouncer, Path]]:
    _require_pgbouncer()
    with (
        self_signed_certificate("db.example.test") as (key, cert),
        PgBouncer((pg_server.host, pg_server.port), tls=(key, cert)) as running,
    ):
        yield running, cert


def test_tls_host_name_mismatch(tls_bouncer: tuple[PgBouncer, Path]) -> None:
    bouncer, cert = tls_bouncer
    # The handshake itself works: sslmode=verify-ca accepts the certificate.
    psycopg.connect(bouncer.dsn(sslmode="verify-ca", sslrootcert=str(cert))).close()
    verify = {"sslmode": "verify-full", "sslrootcert": str(cert)}

    async def asyncpg_verify() -> None:
        context = ssl.create_default_context(cafile=str(cert))
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=bouncer.port,
            user="postgres",
            password=PASSWORD,
            database="postgres",
            ssl=context,
            timeout=5,
        )
        await conn.close()

    raisers: dict[str, Callable[[], object]] = {
        "psycopg": lambda: psycopg.connect(bouncer.dsn(**verify)),
        "psycopg2": lambda: psycopg2.connect(bouncer.dsn(**verify)),
        "sqlalchemy+psycopg": _sqlalchemy_to(_bouncer_url(bouncer, "psycopg"), connect_args=verify),
        "asyncpg": _asyncpg_run(asyncpg_verify),
    }
    for name, raiser in raisers.items():
        exc = capture(raiser)
        assert "match" in str(exc) or "mismatch" in str(exc), (name, exc)
        _assert_permanent(exc, "ssl_config")


def test_asyncpg_ssl_required_by_a_server_without_ssl(pg_server: Any) -> None:
    async def direct() -> None:
        conn = await asyncpg.connect(
            host=pg_server.host, port=pg_server.port, user="postgres", ssl="require", timeout=5
        )
        await conn.close()

    async def by_url() -> None:
        conn = await asyncpg.connect(pg_server.url(driver=None) + "?sslmode=require", timeout=5)
        await conn.close()

    async def engine() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        eng = create_async_engine(pg_server.url(driver="asyncpg"), connect_args={"ssl": "require"})
        try:
            async with eng.connect():
                pass
        finally:
            await eng.dispose()

    for raiser in (direct, by_url, engine):
        _assert_permanent(capture(_asyncpg_run(raiser)), "ssl_config")


@pytest.mark.parametrize(
    "params",
    [
        {"require_auth": "scram-sha-256"},
        {"require_auth": "md5"},
        {"require_auth": "!none"},
        {"channel_binding": "require"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_authentication_requirements_the_server_cannot_meet(
    pg_server: Any, params: dict[str, str]
) -> None:
    """libpq refuses a server (trust auth, no SSL) that does not authenticate as demanded."""
    for connect in (psycopg.connect, psycopg2.connect):
        exc = capture(lambda: connect(pg_server.dsn(connect_timeout=5, **params)))  # noqa: B023
        _assert_permanent(exc, "auth_config")


# --------------------------------------------------- statements and closed pools


def test_too_many_parameters_is_refused_by_the_driver(pg_database: Any) -> None:
    n = 70_000  # over the protocol's 65535
    placeholders = ",".join(["%s"] * n)

    def psycopg_query() -> None:
        with psycopg.connect(pg_database.dsn()) as conn:
            conn.execute(f"SELECT array_length(ARRAY[{placeholders}]::int[], 1)", [1] * n)

    def sqlalchemy_query() -> None:
        engine = sa.create_engine(pg_database.url())
        names = ",".join(f":p{i}" for i in range(n))
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f"SELECT ARRAY[{names}]"), {f"p{i}": 1 for i in range(n)})
        finally:
            engine.dispose()

    async def asyncpg_query() -> None:
        m = 40_000  # asyncpg's own limit is 32767
        conn = await asyncpg.connect(pg_database.server.url(pg_database.name, driver=None))
        try:
            args = ",".join(f"${i + 1}::int" for i in range(m))
            await conn.fetchval(f"SELECT array_length(ARRAY[{args}], 1)", *([1] * m))
        finally:
            await conn.close()

    for raiser in (psycopg_query, sqlalchemy_query, _asyncpg_run(asyncpg_query)):
        exc = capture(raiser)
        _assert_permanent(exc, "too_many_parameters")
        guard = outlast.Guard("params")
        fault = guard.classify(exc)
        assert fault is not None and guard.evidence(fault) is None  # nothing reached the server


def test_a_closed_pool_is_a_bug(pg_database: Any) -> None:
    dsn = pg_database.dsn()
    url = pg_database.server.url(pg_database.name, driver=None)

    def psycopg_pool_closed() -> None:
        pool = psycopg_pool.ConnectionPool(dsn, min_size=1, open=True)
        pool.close()
        with pool.connection():
            pass

    async def psycopg_async_pool_closed() -> None:
        pool = psycopg_pool.AsyncConnectionPool(dsn, min_size=1, open=False)
        await pool.open()
        await pool.close()
        async with pool.connection():
            pass

    def outlast_psycopg_pool_closed() -> None:
        pool = outlast.psycopg.ConnectionPool(dsn, min_size=1, open=True)
        pool.close()
        with pool.connection():
            pass

    def psycopg2_pool_closed() -> None:
        pool = psycopg2.pool.ThreadedConnectionPool(1, 2, dsn)
        pool.closeall()
        pool.getconn()

    def outlast_psycopg2_pool_closed() -> None:
        pool = outlast.psycopg2.ConnectionPool(dsn, max_size=2)
        pool.close()
        with pool.connection():
            pass

    async def asyncpg_pool_closed() -> None:
        pool = await asyncpg.create_pool(url, min_size=1)
        await pool.close()
        await pool.fetchval("SELECT 1")

    async def outlast_asyncpg_pool_closed() -> None:
        pool = await outlast.asyncpg.create_pool(url, min_size=1)
        await pool.close()
        async with pool.acquire():
            pass

    raisers = [
        psycopg_pool_closed,
        _asyncpg_run(psycopg_async_pool_closed),
        outlast_psycopg_pool_closed,
        psycopg2_pool_closed,
        outlast_psycopg2_pool_closed,
        _asyncpg_run(asyncpg_pool_closed),
        _asyncpg_run(outlast_asyncpg_pool_closed),
    ]
    for raiser in raisers:
        exc = capture(raiser)
        _assert_permanent(exc, "pool_closed")
        guard, events = _counting_guard("closed-pool")
        _tried_once(guard, events, raiser)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg", "sqlalchemy+psycopg"])
def test_one_statement_over_temp_file_limit(pg_database: Any, driver: str) -> None:
    from fault_kit import connect_and_query

    server = pg_database.server
    steps = [
        "SET temp_file_limit = '64kB'",
        "SET work_mem = '64kB'",
        "SELECT * FROM generate_series(1, 200000) g ORDER BY g DESC",
    ]
    exc = capture(
        lambda: connect_and_query(
            driver, server.host, server.port, dbname=pg_database.name, steps=steps
        )
    )
    fault = outlast.classify(exc)
    assert fault is not None
    assert (fault.kind, fault.reason, fault.sqlstate, fault.phase) == (
        K.PERMANENT,
        "configuration_limit_exceeded",
        "53400",
        "statement",
    )


# ----------------------------------------------------------------- pool exhaustion


def test_pool_exhaustion_is_one_kind_whichever_pool(pg_database: Any) -> None:
    dsn = pg_database.dsn()
    url = pg_database.server.url(pg_database.name, driver=None)

    def psycopg_pool_full() -> None:
        with (
            psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=1, timeout=0.3) as pool,
            pool.connection(),
            pool.connection(),
        ):
            pass

    def sqlalchemy_full() -> None:
        engine = sa.create_engine(pg_database.url(), pool_size=1, max_overflow=0, pool_timeout=0.3)
        try:
            with engine.connect(), engine.connect():
                pass
        finally:
            engine.dispose()

    async def sqlalchemy_asyncpg_full() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(
            pg_database.url(driver="asyncpg"), pool_size=1, max_overflow=0, pool_timeout=0.3
        )
        try:
            async with engine.connect(), engine.connect():
                pass
        finally:
            await engine.dispose()

    async def asyncpg_full() -> None:
        async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
            async with pool.acquire(), pool.acquire(timeout=0.3):
                pass

    async def outlast_asyncpg_full() -> None:
        async with outlast.asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
            async with pool.acquire(), pool.acquire(timeout=0.3):
                pass

    def psycopg2_full() -> None:
        pool = psycopg2.pool.ThreadedConnectionPool(1, 1, dsn)
        try:
            pool.getconn()
            pool.getconn()
        finally:
            pool.closeall()

    def outlast_psycopg2_full() -> None:
        pool = outlast.psycopg2.ConnectionPool(dsn, max_size=1, timeout=0.3)
        try:
            with pool.connection(), pool.connection():
                pass
        finally:
            pool.close()

    raisers = {
        "psycopg_pool": psycopg_pool_full,
        "sqlalchemy": sqlalchemy_full,
        "sqlalchemy+asyncpg": _asyncpg_run(sqlalchemy_asyncpg_full),
        "asyncpg": _asyncpg_run(asyncpg_full),
        "outlast.asyncpg": _asyncpg_run(outlast_asyncpg_full),
        "psycopg2.pool": psycopg2_full,
        "outlast.psycopg2": outlast_psycopg2_full,
    }
    seen = {}
    for name, raiser in raisers.items():
        fault = outlast.classify(capture(raiser))
        assert fault is not None, name
        seen[name] = (fault.kind, fault.reason, fault.phase)
    assert set(seen.values()) == {(K.UNAVAILABLE, "pool_timeout", "connect")}, seen


# ----------------------------------------------------------------- outlast wait


def _wait(dsn: str, *extra: str) -> tuple[int, float, str]:
    env = dict(os.environ)
    env.pop("OUTLAST_DSN", None)
    env.pop("DATABASE_URL", None)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "outlast", "wait", "--dsn", dsn, "--timeout", "60", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    return result.returncode, time.monotonic() - start, result.stderr + result.stdout


@pytest.mark.parametrize(
    ("what", "driver"),
    [("startup options", "psycopg"), ("startup options", "psycopg2"), ("password", "asyncpg")],
)
def test_outlast_wait_gives_up_at_once(bouncer: PgBouncer, what: str, driver: str) -> None:
    if what == "password":
        dsn = bouncer.dsn(password="not-" + PASSWORD)
    else:
        dsn = bouncer.dsn(options=STARTUP_OPTIONS)
    code, took, output = _wait(dsn, "--driver", driver)
    assert code == 2, output
    assert took < 30, output  # well before its 60 s timeout, on a loaded machine
    assert PASSWORD not in output
