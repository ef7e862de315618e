"""Pooler presets keep no session state: no server-side prepared statements.

A transaction pooler (PgBouncer, Neon's ``-pooler`` hosts) runs each
transaction on whichever server connection is free, so a statement prepared
on one is missing on the next. Each test runs the same parametrized query many
times on one connection and then reads ``pg_prepared_statements`` (the named
statements of *that* session) on the real server: empty with the pooler
preset, not empty with the default preset, for every driver that prepares.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from outlast._core.connections.hardening import PRESETS, preset_for
from outlast.asyncpg import connect_kwargs as asyncpg_kwargs
from outlast.asyncpg import create_pool
from outlast.psycopg import AsyncConnectionPool, ConnectionPool
from outlast.psycopg import connect as psycopg_connect
from outlast.psycopg import connect_kwargs as psycopg_kwargs
from outlast.psycopg2 import ConnectionPool as Psycopg2Pool
from outlast.sqlalchemy import create_async_engine, create_engine

RUNS = 12  # psycopg prepares after 5 runs of the same query
PREPARED = "SELECT count(*) FROM pg_prepared_statements"
NEON_POOLER = "postgresql://app:pw@ep-a-b-pooler.us-east-2.aws.neon.tech/app"


# ------------------------------------------------------------ pure logic


def test_pooler_presets_switch_prepared_statements_off() -> None:
    assert PRESETS["default"].prepared_statements
    assert PRESETS["neon"].prepared_statements
    assert not PRESETS["pgbouncer"].prepared_statements
    assert not preset_for(NEON_POOLER).prepared_statements
    assert not preset_for(NEON_POOLER, "neon").prepared_statements
    assert preset_for(NEON_POOLER.replace("-pooler", "")).prepared_statements


def test_driver_options_for_the_pooler_preset() -> None:
    params, _ = psycopg_kwargs("host=db dbname=app", preset="pgbouncer")
    assert params["prepare_threshold"] is None
    params, _ = psycopg_kwargs("host=db dbname=app")
    assert "prepare_threshold" not in params  # psycopg's own default (5) stays
    params, _ = asyncpg_kwargs(NEON_POOLER)
    assert params["statement_cache_size"] == 0
    # The caller's own choice wins (a PgBouncer >= 1.21 with
    # max_prepared_statements can keep track of them).
    params, _ = psycopg_kwargs("host=db", preset="pgbouncer", kwargs={"prepare_threshold": 3})
    assert params["prepare_threshold"] == 3
    params, _ = asyncpg_kwargs(NEON_POOLER, kwargs={"statement_cache_size": 50})
    assert params["statement_cache_size"] == 50


# ------------------------------------------------------------ psycopg 3


def _psycopg_runs(conn: Any) -> int:
    for i in range(RUNS):
        assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
    count: int = conn.execute(PREPARED).fetchone()[0]
    return count


@pytest.mark.parametrize(("preset", "prepares"), [("default", True), ("pgbouncer", False)])
def test_psycopg_pool(pg_database: Any, preset: str, prepares: bool) -> None:
    with (
        ConnectionPool(pg_database.dsn(), preset=preset, min_size=1, max_size=1, open=True) as pool,
        pool.connection() as conn,
    ):
        assert (_psycopg_runs(conn) > 0) is prepares


@pytest.mark.parametrize(("preset", "prepares"), [("default", True), ("pgbouncer", False)])
async def test_psycopg_async_pool(pg_database: Any, preset: str, prepares: bool) -> None:
    async with (
        AsyncConnectionPool(pg_database.dsn(), preset=preset, min_size=1, max_size=1) as pool,
        pool.connection() as conn,
    ):
        for i in range(RUNS):
            cur = await conn.execute("SELECT %s::int + 1", (i,))
            assert await cur.fetchone() == (i + 1,)
        cur = await conn.execute(PREPARED)
        row = await cur.fetchone()
        assert row is not None
        assert (row[0] > 0) is prepares


def test_psycopg_single_connection(pg_database: Any) -> None:
    with psycopg_connect(pg_database.dsn(), preset="pgbouncer") as conn:
        assert _psycopg_runs(conn) == 0
    with psycopg_connect(pg_database.dsn()) as conn:
        assert _psycopg_runs(conn) > 0


# ------------------------------------------------------------ SQLAlchemy


def _sa_runs(conn: sa.Connection) -> int:
    for i in range(RUNS):
        assert conn.execute(sa.text("SELECT CAST(:i AS int) + 1"), {"i": i}).scalar() == i + 1
    return int(conn.execute(sa.text(PREPARED)).scalar_one())


@pytest.mark.parametrize(("preset", "prepares"), [("default", True), ("pgbouncer", False)])
def test_sqlalchemy_psycopg_engine(pg_database: Any, preset: str, prepares: bool) -> None:
    engine = create_engine(pg_database.url(driver="psycopg"), preset=preset)
    try:
        with engine.connect() as conn:
            assert (_sa_runs(conn) > 0) is prepares
    finally:
        engine.dispose()


async def _sa_async_runs(engine: Any) -> int:
    async with engine.connect() as conn:
        for i in range(RUNS):
            value = (await conn.execute(sa.text("SELECT CAST(:i AS int) + 1"), {"i": i})).scalar()
            assert value == i + 1
        return int((await conn.execute(sa.text(PREPARED))).scalar_one())


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.parametrize(("preset", "prepares"), [("default", True), ("pgbouncer", False)])
async def test_sqlalchemy_async_engine(
    pg_database: Any, driver: str, preset: str, prepares: bool
) -> None:
    engine = create_async_engine(pg_database.url(driver=driver), preset=preset)
    try:
        assert (await _sa_async_runs(engine) > 0) is prepares
    finally:
        await engine.dispose()


async def test_sqlalchemy_callers_connect_args_win(pg_database: Any) -> None:
    # A PgBouncer >= 1.21 with max_prepared_statements keeps track of
    # protocol-level prepared statements: the caller may switch them back on.
    engine = create_async_engine(
        pg_database.url(driver="asyncpg"),
        preset="pgbouncer",
        connect_args={"statement_cache_size": 100, "prepared_statement_cache_size": 100},
    )
    try:
        assert await _sa_async_runs(engine) > 0
    finally:
        await engine.dispose()


# ------------------------------------------------------------ asyncpg


@pytest.mark.parametrize(("preset", "prepares"), [("default", True), ("pgbouncer", False)])
async def test_asyncpg_pool(pg_database: Any, preset: str, prepares: bool) -> None:
    async with (
        create_pool(pg_database.url(driver=None), preset=preset, min_size=1, max_size=1) as pool,
        pool.acquire() as conn,
    ):
        for i in range(RUNS):
            assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
        assert (await conn.fetchval(PREPARED) > 0) is prepares


async def test_asyncpg_pool_keeps_pooler_settings_across_releases(pg_database: Any) -> None:
    # asyncpg's reset on release runs RESET ALL, which undoes a SET: the
    # pooler preset applies its settings again on every acquire.
    preset = PRESETS["pgbouncer"].replace(statement_timeout=7)
    async with create_pool(
        pg_database.url(driver=None), preset=preset, min_size=1, max_size=1
    ) as pool:
        pids = set()
        for _ in range(3):
            async with pool.acquire() as conn:
                pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                assert await conn.fetchval("SHOW statement_timeout") == "7s"
                await conn.execute("SET statement_timeout = 1000")  # the app's own
        assert len(pids) == 1  # one connection, released and acquired again


# ------------------------------------------------------------ psycopg2


@pytest.mark.parametrize("preset", ["default", "pgbouncer"])
def test_psycopg2_never_prepares(pg_database: Any, preset: str) -> None:
    # Nothing to switch off: psycopg2 sends every statement as simple text.
    with Psycopg2Pool(pg_database.dsn(), preset=preset, max_size=1) as pool:
        with pool.connection() as conn, conn.cursor() as cur:
            for i in range(RUNS):
                cur.execute("SELECT %s::int + 1", (i,))
                assert cur.fetchone() == (i + 1,)
            cur.execute(PREPARED)
            assert cur.fetchone() == (0,)
