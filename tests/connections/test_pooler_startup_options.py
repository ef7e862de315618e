"""Pooler presets send no startup ``options``, yet the session ends up with the timeouts.

outlast's chaos proxy (``pg_proxy``) sits between client and server and records
the parameters of every StartupMessage (`Proxy.logins`).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from outlast._core.connections.hardening import PRESETS
from outlast.asyncpg import connect as asyncpg_connect
from outlast.psycopg import ConnectionPool
from outlast.psycopg2 import connect as psycopg2_connect
from outlast.sqlalchemy import create_async_engine, create_engine
from outlast.testing._chaos_fixtures import ProxiedServer

POOLER = PRESETS["pgbouncer"].replace(statement_timeout=7, idle_in_transaction_session_timeout=9)
DIRECT = PRESETS["default"].replace(statement_timeout=7, idle_in_transaction_session_timeout=9)


def startups(proxy: ProxiedServer) -> list[dict[str, str]]:
    """The parameters of every StartupMessage the proxy saw in this test."""
    return [login["parameters"] for login in proxy.logins()]


def _no_timeouts_at_startup(proxy: ProxiedServer) -> None:
    startups_seen = startups(proxy)
    assert startups_seen, "no StartupMessage seen"
    for params in startups_seen:
        assert "options" not in params
        assert "statement_timeout" not in params
        assert "idle_in_transaction_session_timeout" not in params
        assert params.get("application_name") == "outlast"


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sqlalchemy_pooler_preset(pg_proxy: ProxiedServer, pg_database: Any, driver: str) -> None:
    engine = create_engine(pg_proxy.url(pg_database.name, driver=driver), preset=POOLER)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "7s"
            assert (
                conn.execute(sa.text("SHOW idle_in_transaction_session_timeout")).scalar() == "9s"
            )
    finally:
        engine.dispose()
    _no_timeouts_at_startup(pg_proxy)


async def test_sqlalchemy_asyncpg_pooler_preset(pg_proxy: ProxiedServer, pg_database: Any) -> None:
    engine = create_async_engine(pg_proxy.url(pg_database.name, driver="asyncpg"), preset=POOLER)
    try:
        async with engine.connect() as conn:
            value = (await conn.execute(sa.text("SHOW statement_timeout"))).scalar()
            assert value == "7s"
    finally:
        await engine.dispose()
    _no_timeouts_at_startup(pg_proxy)


def test_psycopg_pool_pooler_preset(pg_proxy: ProxiedServer, pg_database: Any) -> None:
    with (
        ConnectionPool(
            pg_proxy.dsn(pg_database.name), preset=POOLER, min_size=1, max_size=1, open=True
        ) as pool,
        pool.connection() as conn,
    ):
        assert conn.execute("SHOW statement_timeout").fetchone() == ("7s",)
    _no_timeouts_at_startup(pg_proxy)


def test_psycopg2_pooler_preset(pg_proxy: ProxiedServer, pg_database: Any) -> None:
    conn = psycopg2_connect(pg_proxy.dsn(pg_database.name), preset=POOLER)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("7s",)
    finally:
        conn.close()
    _no_timeouts_at_startup(pg_proxy)


async def test_asyncpg_pooler_preset(pg_proxy: ProxiedServer, pg_database: Any) -> None:
    conn = await asyncpg_connect(pg_proxy.url(pg_database.name, driver=None), preset=POOLER)
    try:
        assert await conn.fetchval("SHOW statement_timeout") == "7s"
    finally:
        await conn.close()
    _no_timeouts_at_startup(pg_proxy)


def test_direct_preset_does_send_startup_options(pg_proxy: ProxiedServer, pg_database: Any) -> None:
    # The contrast: without a pooler, the timeouts travel in the StartupMessage.
    engine = create_engine(pg_proxy.url(pg_database.name), preset=DIRECT)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "7s"
    finally:
        engine.dispose()
    assert startups(pg_proxy)
    assert "-c statement_timeout=7000" in startups(pg_proxy)[0]["options"]
