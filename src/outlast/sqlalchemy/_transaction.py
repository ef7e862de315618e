"""`Guard.transaction` / `Guard.atransaction` adapters for SQLAlchemy sources.

- `Engine` -> ``fn(connection)`` in ``connection.begin()``;
- `sessionmaker` -> ``fn(session)`` in ``session.begin()``;
- `AsyncEngine` / `async_sessionmaker` -> the same, awaited.

The COMMIT-outcome question is asked on a connection checked out from the same
engine: SQLAlchemy invalidates the whole pool when it sees a disconnect, so
that connection is a fresh one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from outlast._core.transactions.adapters import (
    MARKER_SQL,
    StatusReply,
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

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        with self.engine.connect() as conn:
            row = conn.execute(_STATUS, {"xid": xid}).one()
            conn.rollback()
        return StatusReply(row[0], row[1])


class SessionAdapter:
    """``fn(session)`` on a sync `sessionmaker`."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def open(self) -> Any:
        return self.factory()

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
        if discard:
            handle.invalidate()
        handle.close()

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        with self.factory() as session:
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
        return handle

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:
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
