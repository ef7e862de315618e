"""`Guard.transaction` / `atransaction` on every supported source, with a lost COMMIT reply.

The proxy forwards COMMIT, lets the server commit, then cuts the connection
before the reply: each call must return fn's result once, with one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import outlast
from outlast.chaos import Proxy
from outlast.testing.plugin import PgDatabase


@pytest.fixture
def db(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int NOT NULL)")
    return pg_database


@pytest.fixture
def proxy(pg_server: Any) -> Iterator[Proxy]:
    with Proxy(upstream=(pg_server.host, pg_server.port)) as p:
        p.add_fault("cut_after", pattern=r"^\s*COMMIT", count=1)
        yield p


def _guard() -> outlast.Guard:
    return outlast.Guard(
        "sources",
        retry=outlast.Retry(attempts=5, timeout=30, backoff=outlast.Backoff(initial=0.05)),
        listeners=(),
    )


def _cut_fired(proxy: Proxy) -> bool:
    """The COMMIT reply really was dropped (a used-up cut removes itself)."""
    return not [f for f in proxy.faults() if f["type"] == "cut_after"]


def _count(db: PgDatabase) -> int:
    with psycopg.connect(db.dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        return int(row[0])


def _dsn(db: PgDatabase, proxy: Proxy) -> str:
    return db.dsn(host=proxy.host, port=proxy.port)


def _url(db: PgDatabase, proxy: Proxy, driver: str | None) -> str:
    scheme = "postgresql" if driver is None else f"postgresql+{driver}"
    return f"{scheme}://postgres@{proxy.host}:{proxy.port}/{db.name}"


def test_psycopg_pool_and_conninfo(db: PgDatabase, proxy: Proxy) -> None:
    from psycopg_pool import ConnectionPool

    def add(conn: psycopg.Connection[Any], n: int) -> str:
        conn.execute("INSERT INTO items VALUES (%s)", (n,))
        return "done"

    guard = _guard()
    with ConnectionPool(_dsn(db, proxy), min_size=1, max_size=2, open=True) as pool:
        assert guard.transaction(pool, add, 1) == "done"
        assert _cut_fired(proxy)
    proxy.add_fault("cut_after", pattern=r"^\s*COMMIT", count=1)
    assert guard.transaction(_dsn(db, proxy), add, 2) == "done"
    assert _cut_fired(proxy)
    assert _count(db) == 2


def test_sqlalchemy_engine_and_sessionmaker(db: PgDatabase, proxy: Proxy) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session, sessionmaker

    engine = sa.create_engine(_url(db, proxy, "psycopg"))
    insert = sa.text("INSERT INTO items VALUES (:n)")
    guard = _guard()
    try:
        assert guard.transaction(engine, lambda c: c.execute(insert, {"n": 1}).rowcount) == 1
        assert _cut_fired(proxy)
        proxy.add_fault("cut_after", pattern=r"^\s*COMMIT", count=1)
        factory = sessionmaker(engine)

        def add(session: Session) -> int:
            return session.execute(insert, {"n": 2}).rowcount  # type: ignore[attr-defined,no-any-return]

        assert guard.transaction(factory, add) == 1
        assert _cut_fired(proxy)
    finally:
        engine.dispose()
    assert _count(db) == 2


def test_psycopg2_pool(db: PgDatabase, proxy: Proxy) -> None:
    from psycopg2.pool import ThreadedConnectionPool

    pool = ThreadedConnectionPool(1, 2, _dsn(db, proxy))
    try:

        def add(conn: Any) -> int:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO items VALUES (1)")
                return int(cur.rowcount)

        assert _guard().transaction(pool, add) == 1
        assert _cut_fired(proxy)
    finally:
        pool.closeall()
    assert _count(db) == 1


async def test_async_sources(db: PgDatabase, proxy: Proxy) -> None:
    import asyncpg
    import sqlalchemy as sa
    from psycopg_pool import AsyncConnectionPool
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    guard = _guard()

    async def add_asyncpg(conn: Any) -> str:
        return str(await conn.execute("INSERT INTO items VALUES (1)"))

    pool = await asyncpg.create_pool(_url(db, proxy, None), min_size=1, max_size=2)
    try:
        assert await guard.atransaction(pool, add_asyncpg) == "INSERT 0 1"
        assert _cut_fired(proxy)
    finally:
        await pool.close()

    async def add_psycopg(conn: Any) -> int:
        cur = await conn.execute("INSERT INTO items VALUES (2)")
        return int(cur.rowcount)

    proxy.add_fault("cut_after", pattern=r"^\s*COMMIT", count=1)
    async with AsyncConnectionPool(_dsn(db, proxy), min_size=1, max_size=2, open=False) as apool:
        assert await guard.atransaction(apool, add_psycopg) == 1
        assert _cut_fired(proxy)

    engine = create_async_engine(_url(db, proxy, "asyncpg"))
    insert = sa.text("INSERT INTO items VALUES (3)")
    try:
        proxy.add_fault("cut_after", pattern=r"^\s*COMMIT", count=1)

        async def add_sa(conn: Any) -> int:
            return int((await conn.execute(insert)).rowcount)

        assert await guard.atransaction(engine, add_sa) == 1
        assert _cut_fired(proxy)
        proxy.add_fault("cut_after", pattern=r"^\s*COMMIT", count=1)
        assert await guard.atransaction(async_sessionmaker(engine), add_sa) == 1
        assert _cut_fired(proxy)
    finally:
        await engine.dispose()
    assert _count(db) == 4


def test_unknown_source_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="does not know how to open a transaction on a"):
        _guard().transaction(object(), lambda c: None)
