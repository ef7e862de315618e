"""`Guard.atransaction` adapter for asyncpg pools.

Source: an `asyncpg.Pool`. ``fn`` receives the `asyncpg.Connection` inside
``connection.transaction()``; a broken connection is terminated before it goes
back to the pool. The COMMIT-outcome question is asked on a new connection
made with the pool's own connect arguments (asyncpg keeps them as
``_connect_args`` / ``_connect_kwargs``); if a future asyncpg drops them, a
pooled connection is used instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from outlast._core.transactions.adapters import (
    MARKER_SQL,
    StatusReply,
    connection_gone,
    register_adapter,
    status_sql,
)

__all__ = ["AsyncpgAdapter"]

_STATUS = status_sql("$1")


@dataclass
class _Handle:
    conn: Any
    transaction: Any = None


class AsyncpgAdapter:
    """``await fn(conn)`` on an `asyncpg.Pool`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def open(self) -> Any:
        return _Handle(await self.pool.acquire())

    async def begin(self, handle: Any) -> Any:
        handle.transaction = handle.conn.transaction()
        await handle.transaction.start()
        return handle.conn

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:
        row = await handle.conn.fetchrow(MARKER_SQL)
        return row[0], row[1]

    async def commit(self, handle: Any) -> None:
        await handle.transaction.commit()

    async def rollback(self, handle: Any) -> None:
        await handle.transaction.rollback()

    async def close(self, handle: Any, *, discard: bool) -> None:
        if discard:
            handle.conn.terminate()
        await self.pool.release(handle.conn)

    async def lost(self, handle: Any) -> bool:
        return connection_gone(handle.conn)

    async def status(self, xid: str, *, timeout: float) -> StatusReply:
        args = getattr(self.pool, "_connect_args", None)
        kwargs = getattr(self.pool, "_connect_kwargs", None)
        if args is None or kwargs is None:
            async with self.pool.acquire(timeout=timeout) as pooled:
                row = await pooled.fetchrow(_STATUS, xid, timeout=timeout)
        else:
            conn = await asyncpg.connect(*args, **{**kwargs, "timeout": timeout})
            try:
                row = await conn.fetchrow(_STATUS, xid, timeout=timeout)
            finally:
                conn.terminate()
        assert row is not None
        return StatusReply(row[0], row[1])


register_adapter(lambda s: isinstance(s, asyncpg.Pool), AsyncpgAdapter, asynchronous=True)
