"""`Guard.transaction` / `Guard.atransaction` adapters for SQLAlchemy sources.

- `Engine` -> ``fn(connection)`` in ``connection.begin()``;
- `sessionmaker` -> ``fn(session)`` in ``session.begin()``;
- `AsyncEngine` / `async_sessionmaker` -> the same, awaited.

A session is flushed before the transaction's marker is read: with
``autoflush=False`` (the FastAPI tutorial's ``SessionLocal``) objects that fn
only ``add``-ed would otherwise be INSERTed inside ``commit()``, after the
marker; a fault on their way then counts as the fault before COMMIT it is.

The COMMIT-outcome question is asked on a connection checked out from the same
engine: SQLAlchemy invalidates the whole pool when it sees a disconnect, so
that connection is a fresh one. On a sync engine the question keeps to its
timeout whatever the engine's own settings: a connection made for it gets a
libpq ``connect_timeout`` (through a ``do_connect`` listener that acts only
for these questions), and its query runs under a socket deadline. (An async
engine's question is cancelled at its timeout.)
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from outlast._core.connections.socket_deadline import connection_fileno, socket_deadline
from outlast._core.transactions.adapters import (
    MARKER_SQL,
    StatusReply,
    connection_gone,
    register_adapter,
    status_sql,
)
from outlast.sqlalchemy._commit import resolved_elsewhere

__all__ = [
    "AsyncEngineAdapter",
    "AsyncSessionAdapter",
    "EngineAdapter",
    "SessionAdapter",
]

_MARKER = text(MARKER_SQL)
_STATUS = text(status_sql(":xid"))


def _pair(row: Any) -> tuple[str | None, str | None]:
    return row[0], row[1]


# The connect timeout (seconds) for a connection made for a status question
# in this context; None for every other connection of the engine.
_ASKING: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "outlast_status_connect", default=None
)
_BOUNDED: weakref.WeakSet[Engine] = weakref.WeakSet()
_BOUNDING = threading.Lock()
_LIBPQ = frozenset({"psycopg", "psycopg2", "psycopgbinary"})


def _connect_for_status(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    """``do_connect``: a status question's connection gets a libpq connect timeout.

    Appended after the application's own listeners, which have already
    adjusted `cparams` (a fresh token, say). Every other connect is left alone.
    """
    limit = _ASKING.get()
    if limit is None or dialect.driver not in _LIBPQ:
        return None
    params = dict(cparams)
    # libpq counts whole seconds and treats 1 as 2; keep a smaller configured value.
    seconds = max(2, math.ceil(limit))
    configured = params.get("connect_timeout")
    if configured is None or int(configured) <= 0 or int(configured) > seconds:
        params["connect_timeout"] = seconds
    return dialect.connect(*cargs, **params)


def _ask(engine: Engine, xid: str, timeout: float) -> StatusReply:
    """`status_sql` on `engine` within about `timeout` seconds, whatever its settings."""
    with _BOUNDING:
        if engine not in _BOUNDED:
            event.listen(engine, "do_connect", _connect_for_status)
            _BOUNDED.add(engine)
    deadline = time.monotonic() + timeout
    token = _ASKING.set(timeout)
    try:
        conn = engine.connect()
    finally:
        _ASKING.reset(token)
    with conn:
        fileno = connection_fileno(conn.connection.dbapi_connection)
        try:
            with socket_deadline.bound(fileno, max(deadline - time.monotonic(), 0.05)):
                row = conn.execute(_STATUS, {"xid": xid}).one()
                conn.rollback()
        except BaseException:
            if not conn.invalidated:
                conn.invalidate()  # its socket may have been shut down
            raise
    return StatusReply(row[0], row[1])


def _gone(conn: Connection | None) -> bool:
    """Is this SQLAlchemy connection, or the driver connection under it, dead?"""
    if conn is None or conn.closed or conn.invalidated:
        return True
    try:
        return connection_gone(conn.connection.dbapi_connection)
    except Exception:
        return True  # it cannot even say: treat it as gone


# Where a session adapter keeps the connection its transaction runs on.
_CONNECTION = "outlast_connection"


def _engine_of(factory: sessionmaker[Session]) -> Engine | None:
    bind = factory.kw.get("bind")
    if isinstance(bind, Connection):
        return bind.engine
    return bind if isinstance(bind, Engine) else None


class EngineAdapter:
    """``fn(connection)`` on a sync `Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open(self) -> Any:
        return self.engine.connect()

    def begin(self, handle: Any) -> Any:
        handle.begin()
        return handle

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        return _pair(handle.execute(_MARKER).one())

    def commit(self, handle: Any) -> None:
        with resolved_elsewhere():
            handle.commit()

    def rollback(self, handle: Any) -> None:
        handle.rollback()

    def close(self, handle: Any, *, discard: bool) -> None:
        if discard and not handle.invalidated:
            handle.invalidate()
        handle.close()

    def lost(self, handle: Any) -> bool:
        return _gone(handle)

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        return _ask(self.engine, xid, timeout)


class SessionAdapter:
    """``fn(session)`` on a sync `sessionmaker`."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def open(self) -> Any:
        return self.factory()

    def begin(self, handle: Any) -> Any:
        handle.begin()
        try:  # the transaction's connection, to tell later whether it died
            handle.info[_CONNECTION] = handle.connection()
        except Exception:  # bound per mapper only; the first query checks out
            handle.info[_CONNECTION] = None
        return handle

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        handle.flush()  # what fn added is written before COMMIT, not inside it
        return _pair(handle.execute(_MARKER).one())

    def commit(self, handle: Any) -> None:
        with resolved_elsewhere():
            handle.commit()

    def rollback(self, handle: Any) -> None:
        handle.rollback()

    def close(self, handle: Any, *, discard: bool) -> None:
        if discard:
            handle.invalidate()
        handle.close()

    def lost(self, handle: Any) -> bool:
        conn = handle.info.get(_CONNECTION)
        return conn is not None and _gone(conn)

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        engine = _engine_of(self.factory)
        if engine is not None:
            return _ask(engine, xid, timeout)
        with self.factory() as session:  # bound per mapper or table: ask the session
            row = session.execute(_STATUS, {"xid": xid}).one()
            session.rollback()
        return StatusReply(row[0], row[1])


class AsyncEngineAdapter:
    """``await fn(connection)`` on an `AsyncEngine`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def open(self) -> Any:
        return await self.engine.connect()

    async def begin(self, handle: Any) -> Any:
        await handle.begin()
        return handle

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:
        return _pair((await handle.execute(_MARKER)).one())

    async def commit(self, handle: Any) -> None:
        with resolved_elsewhere():
            await handle.commit()

    async def rollback(self, handle: Any) -> None:
        await handle.rollback()

    async def close(self, handle: Any, *, discard: bool) -> None:
        conn: AsyncConnection = handle
        if discard and not conn.invalidated:
            await conn.invalidate()
        await conn.close()

    async def lost(self, handle: Any) -> bool:
        return _gone(handle.sync_connection)

    async def status(self, xid: str, *, timeout: float) -> StatusReply:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_STATUS, {"xid": xid})).one()
            await conn.rollback()
        return StatusReply(row[0], row[1])


class AsyncSessionAdapter:
    """``await fn(session)`` on an `async_sessionmaker`."""

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self.factory = factory

    async def open(self) -> Any:
        return self.factory()

    async def begin(self, handle: Any) -> Any:
        await handle.begin()
        try:
            handle.info[_CONNECTION] = await handle.connection()
        except Exception:
            handle.info[_CONNECTION] = None
        return handle

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:
        await handle.flush()  # what fn added is written before COMMIT, not inside it
        return _pair((await handle.execute(_MARKER)).one())

    async def commit(self, handle: Any) -> None:
        with resolved_elsewhere():
            await handle.commit()

    async def rollback(self, handle: Any) -> None:
        await handle.rollback()

    async def close(self, handle: Any, *, discard: bool) -> None:
        session: AsyncSession = handle
        if discard:
            await session.invalidate()
        await session.close()

    async def lost(self, handle: Any) -> bool:
        conn = handle.info.get(_CONNECTION)
        return conn is not None and _gone(conn.sync_connection)

    async def status(self, xid: str, *, timeout: float) -> StatusReply:
        async with self.factory() as session:
            row = (await session.execute(_STATUS, {"xid": xid})).one()
            await session.rollback()
        return StatusReply(row[0], row[1])


register_adapter(lambda s: isinstance(s, Engine), EngineAdapter)
register_adapter(lambda s: isinstance(s, sessionmaker), SessionAdapter)
register_adapter(lambda s: isinstance(s, AsyncEngine), AsyncEngineAdapter, asynchronous=True)
register_adapter(
    lambda s: isinstance(s, async_sessionmaker), AsyncSessionAdapter, asynchronous=True
)
