"""The transaction's marker is read only when it can be trusted.

``Guard.transaction`` reads the transaction's xid just before COMMIT and, if
the COMMIT is lost, asks ``pg_xact_status`` about it. Two common kinds of
transaction used to have no xid at that moment although they were about to
write: an ORM session with ``autoflush=False`` (the FastAPI tutorial's
``SessionLocal``), whose INSERTs are flushed inside ``commit()``, and a
transaction whose only effect is ``NOTIFY`` (its xid is assigned at COMMIT).
A lost INSERT or COMMIT then read as "nothing was written" and fn's result
came back as success with nothing stored. Each test here loses the INSERT or
the COMMIT on its way to the server (``forward=False``) or loses the COMMIT's
reply, and checks what is really stored: exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import outlast
from outlast.chaos import Proxy
from outlast.testing.plugin import PgDatabase

CUTS = {
    # the INSERT never reaches the server: the transaction rolls back
    "insert_lost": {"pattern": r"^\s*INSERT", "forward": False},
    # the COMMIT never reaches the server: the transaction rolls back
    "commit_lost": {"pattern": r"^\s*COMMIT", "forward": False},
    # the server commits; its reply never comes back
    "reply_lost": {"pattern": r"^\s*COMMIT"},
}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    pk: Mapped[int] = mapped_column(primary_key=True)
    tag: Mapped[str]


@pytest.fixture
def db(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (pk serial PRIMARY KEY, tag text NOT NULL)")
    return pg_database


@pytest.fixture
def proxy(pg_server: Any) -> Iterator[Proxy]:
    with Proxy(upstream=(pg_server.host, pg_server.port)) as p:
        yield p


def _guard() -> outlast.Guard:
    return outlast.Guard(
        "marker",
        retry=outlast.Retry(attempts=5, timeout=30, backoff=outlast.Backoff(initial=0.05)),
        listeners=(),
    )


def _stored(db: PgDatabase, tag: str) -> int:
    with psycopg.connect(db.dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM items WHERE tag = %s", (tag,)).fetchone()
    assert row is not None
    return int(row[0])


def _fired(proxy: Proxy) -> bool:
    return not proxy.faults()  # a used-up cut removes itself


def _url(db: PgDatabase, proxy: Proxy, driver: str) -> str:
    return f"postgresql+{driver}://postgres@{proxy.host}:{proxy.port}/{db.name}"


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("autoflush", [False, True], ids=["autoflush_off", "autoflush_on"])
def test_orm_session_that_only_adds_is_stored_once(
    db: PgDatabase, proxy: Proxy, cut: str, autoflush: bool
) -> None:
    """Fails on the code before this change for autoflush_off with insert_lost / commit_lost."""
    engine = sa.create_engine(_url(db, proxy, "psycopg"))
    SessionLocal = sessionmaker(engine, autoflush=autoflush)  # noqa: N806 - the tutorial's name
    tag = f"orm-{uuid.uuid4().hex[:8]}"

    def place(session: Session) -> str:
        session.add(Item(tag=tag))  # nothing else: flushed at commit time
        return "placed"

    try:
        proxy.add_fault("cut_after", count=1, **CUTS[cut])
        assert _guard().transaction(SessionLocal, place) == "placed"
        assert _fired(proxy)
    finally:
        engine.dispose()
    assert _stored(db, tag) == 1


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_async_session_that_only_adds_is_stored_once(
    db: PgDatabase, proxy: Proxy, cut: str, driver: str
) -> None:
    """Fails on the code before this change with insert_lost / commit_lost."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    tag = f"async-{uuid.uuid4().hex[:8]}"

    async def place(session: AsyncSession) -> str:
        session.add(Item(tag=tag))
        return "placed"

    async def main() -> str:
        engine = create_async_engine(_url(db, proxy, driver))
        try:
            factory = async_sessionmaker(engine, autoflush=False, expire_on_commit=False)
            return await _guard().atransaction(factory, place)
        finally:
            await engine.dispose()

    proxy.add_fault("cut_after", count=1, **CUTS[cut])
    assert asyncio.run(main()) == "placed"
    assert _fired(proxy)
    assert _stored(db, tag) == 1


class _Listener:
    """A LISTEN session straight to the server, outside the proxy."""

    def __init__(self, db: PgDatabase, channel: str) -> None:
        self.channel = channel
        self.conn = psycopg.connect(db.dsn(), autocommit=True)
        self.conn.execute(f"LISTEN {channel}")

    def received(self) -> list[str]:
        """Every payload delivered so far, in order (a fence of our own marks the end)."""
        fence = f"fence-{uuid.uuid4().hex}"
        self.conn.execute("SELECT pg_notify(%s, %s)", (self.channel, fence))
        payloads: list[str] = []
        for note in self.conn.notifies(timeout=10):
            if note.payload == fence:
                return payloads
            payloads.append(note.payload)
        raise AssertionError("the fence notification never arrived")

    def close(self) -> None:
        self.conn.close()


@pytest.mark.parametrize("cut", ["commit_lost", "reply_lost"])
@pytest.mark.parametrize("source", ["psycopg_pool", "sqlalchemy"])
def test_a_transaction_whose_only_effect_is_notify_delivers_once(
    db: PgDatabase, proxy: Proxy, cut: str, source: str
) -> None:
    """Fails on the code before this change with commit_lost: "enqueued", nothing delivered."""
    from psycopg_pool import ConnectionPool

    channel = f"jobs_{uuid.uuid4().hex[:8]}"
    listener = _Listener(db, channel)
    payload = f"job-{uuid.uuid4().hex[:8]}"

    def enqueue(conn: Any) -> str:
        if source == "sqlalchemy":
            conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})
        else:
            conn.execute(f"NOTIFY {channel}, '{payload}'")
        return "enqueued"

    proxy.add_fault("cut_after", count=1, **CUTS[cut])
    try:
        if source == "sqlalchemy":
            engine = sa.create_engine(_url(db, proxy, "psycopg"))
            try:
                assert _guard().transaction(engine, enqueue) == "enqueued"
            finally:
                engine.dispose()
        else:
            dsn = db.dsn(host=proxy.host, port=proxy.port)
            with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
                assert _guard().transaction(pool, enqueue) == "enqueued"
        assert _fired(proxy)
        assert listener.received() == [payload]
    finally:
        listener.close()


def test_a_read_only_transaction_whose_commit_is_lost_returns_its_result(
    db: PgDatabase, proxy: Proxy
) -> None:
    """Reads are not refused or re-run because the marker now always has an xid."""
    from psycopg_pool import ConnectionPool

    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO items (tag) VALUES ('a'), ('b')")
    runs: list[int] = []

    def count(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        runs.append(int(row[0]))
        return int(row[0])

    guard = _guard()
    dsn = db.dsn(host=proxy.host, port=proxy.port)
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        proxy.add_fault("cut_after", count=1, **CUTS["reply_lost"])
        assert guard.transaction(pool, count) == 2
        assert _fired(proxy)
        proxy.add_fault("cut_after", count=1, **CUTS["commit_lost"])
        assert guard.transaction(pool, count) == 2
        assert _fired(proxy)
    # reply lost: resolved committed, fn ran once; COMMIT lost: aborted, fn ran again.
    assert runs == [2, 2, 2]
    assert guard.breaker_state == "closed"
