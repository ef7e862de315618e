"""`outlast.sqlalchemy.install` on an engine the application built (Flask-SQLAlchemy's, say).

The engine's connect arguments were fixed before outlast saw it; the
``do_connect`` event may still change them for each new connection. So a
hardened engine built by someone else gets the preset's connect timeout,
keepalives and server settings (as startup options: a new connection needs no
``SET`` and no ``COMMIT`` of its own, which matters when COMMITs are what the
network loses), the engine's own values win, and connections it already held
are adopted.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import outlast
from outlast.sqlalchemy import hardening_of, install


def test_a_plain_engine_gets_the_presets_connect_arguments(pg_proxy: Any, pg_database: Any) -> None:
    engine = sqlalchemy.create_engine(
        pg_proxy.url(pg_database.name), connect_args={"application_name": "mine"}
    )
    try:
        with engine.connect() as conn:  # a connection made before outlast
            conn.execute(text("SELECT 1"))
        install(engine, outlast.Guard("install", listeners=()))
        assert hardening_of(engine) is not None
        with engine.connect() as conn:  # the adopted one: pinged, works
            assert conn.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
        pg_proxy.clear_logins()
        with engine.connect() as conn:
            timeout = conn.execute(text("SHOW statement_timeout")).scalar()
            name = conn.execute(text("SHOW application_name")).scalar()
        assert timeout == "30s"
        assert name == "mine"  # the engine's own value wins
        options = pg_proxy.logins()[-1]["parameters"].get("options", "")
        assert "statement_timeout" in options  # a startup option, not a SET + COMMIT
    finally:
        engine.dispose()


def test_a_new_connection_on_a_blackholed_link_gives_up_in_seconds(
    pg_proxy: Any, pg_database: Any
) -> None:
    engine = sqlalchemy.create_engine(pg_proxy.url(pg_database.name))
    install(engine, outlast.Guard("install", listeners=()))
    try:
        with pg_proxy.fault("blackhole"):
            start = time.monotonic()
            with pytest.raises(sqlalchemy.exc.OperationalError):
                with engine.connect():
                    pass
            took = time.monotonic() - start
        print(f"\nblackholed connect gave up after {took:.2f}s")
        assert took < 15  # the preset's 3 s connect timeout, not libpq's none
    finally:
        engine.dispose()


async def test_an_asyncpg_engine_gets_its_server_settings(pg_proxy: Any, pg_database: Any) -> None:
    engine = create_async_engine(pg_proxy.url(pg_database.name, driver="asyncpg"))
    install(engine, outlast.Guard("install", listeners=()))
    try:
        async with engine.connect() as conn:
            timeout = (await conn.execute(text("SHOW statement_timeout"))).scalar()
        assert timeout == "30s"
    finally:
        await engine.dispose()


def test_a_request_waits_for_a_pooled_connection_no_longer_than_its_budget(
    pg_database: Any,
) -> None:
    from outlast._core.timing.budget import RequestBudget
    from outlast.sqlalchemy import create_engine

    engine = create_engine(
        pg_database.url(), guard=outlast.Guard("wait", listeners=()),
        pool_size=1, max_overflow=0, pool_timeout=30,
    )  # fmt: skip
    try:
        with engine.connect():  # the only connection, held
            token = RequestBudget(1.0).start()
            try:
                start = time.monotonic()
                with pytest.raises(sqlalchemy.exc.TimeoutError):
                    with engine.connect():
                        pass
                took = time.monotonic() - start
            finally:
                RequestBudget.finish(token)
        print(f"\nthe checkout gave up after {took:.2f}s (pool_timeout 30 s, budget 1 s)")
        assert took < 10  # the budget (0.8 s of work), not pool_timeout
        engine.dispose()  # a new pool: bounded too
        with engine.connect(), pytest.raises(sqlalchemy.exc.TimeoutError):
            token = RequestBudget(0.5).start()
            try:
                with engine.connect():
                    pass
            finally:
                RequestBudget.finish(token)
    finally:
        engine.dispose()
