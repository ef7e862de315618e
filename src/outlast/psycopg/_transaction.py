"""`Guard.transaction` / `Guard.atransaction` adapters for psycopg 3.

Sources: a `psycopg_pool.ConnectionPool` / `AsyncConnectionPool` (connections
are checked out and given back; a broken one is closed first so the pool
drops it) or a conninfo string (a connection per attempt). ``fn`` receives the
`psycopg.Connection` (or `AsyncConnection`) with a transaction open.

The COMMIT-outcome question is asked on a *new* direct connection built from
the pool's conninfo and keyword arguments, never on a pooled one: after an
outage the pool may still hold dead connections, and it may be exhausted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from outlast._core.transactions.adapters import (
    MARKER_SQL,
    StatusReply,
    connection_gone,
    register_adapter,
    status_sql,
)

__all__ = ["AsyncPsycopgAdapter", "PsycopgAdapter"]

_STATUS = status_sql("%s")


def _probe_kwargs(kwargs: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    out = dict(kwargs)
    # libpq counts whole seconds and treats 1 as 2; keep a smaller configured value.
    limit = max(2, math.ceil(timeout))
    configured = out.get("connect_timeout")
    if configured is None or int(configured) <= 0 or int(configured) > limit:
        out["connect_timeout"] = limit
    out["autocommit"] = True
    return out


def _source(source: Any) -> tuple[Any, str, dict[str, Any]]:
    if isinstance(source, str):
        return None, source, {}
    return source, source.conninfo, dict(source.kwargs or {})


class PsycopgAdapter:
    """``fn(conn)`` on a `ConnectionPool` or a conninfo string."""

    def __init__(self, source: ConnectionPool[Any] | str) -> None:
        self.pool, self.conninfo, self.kwargs = _source(source)

    def open(self) -> Any:
        if self.pool is not None:
            return self.pool.getconn()
        return psycopg.connect(self.conninfo, **self.kwargs)

    def begin(self, handle: Any) -> Any:
        if handle.autocommit:
            handle.execute("BEGIN")
        return handle

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        row = handle.execute(MARKER_SQL).fetchone()
        return row[0], row[1]

    def commit(self, handle: Any) -> None:
        handle.commit()  # sends COMMIT whenever a transaction is open, autocommit or not

    def rollback(self, handle: Any) -> None:
        handle.rollback()

    def close(self, handle: Any, *, discard: bool) -> None:
        if self.pool is None:
            handle.close()
            return
        if discard:
            handle.close()  # the pool discards a closed connection
        self.pool.putconn(handle)

    def lost(self, handle: Any) -> bool:
        return connection_gone(handle)

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        conn = psycopg.connect(self.conninfo, **_probe_kwargs(self.kwargs, timeout))
        try:
            row = conn.execute(_STATUS, (xid,)).fetchone()
        finally:
            conn.close()
        assert row is not None
        return StatusReply(row[0], row[1])


class AsyncPsycopgAdapter:
    """``await fn(conn)`` on an `AsyncConnectionPool` or a conninfo string."""

    def __init__(self, source: AsyncConnectionPool[Any] | str) -> None:
        self.pool, self.conninfo, self.kwargs = _source(source)

    async def open(self) -> Any:
        if self.pool is not None:
            return await self.pool.getconn()
        return await psycopg.AsyncConnection.connect(self.conninfo, **self.kwargs)

    async def begin(self, handle: Any) -> Any:
        if handle.autocommit:
            await handle.execute("BEGIN")
        return handle

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:
        row = await (await handle.execute(MARKER_SQL)).fetchone()
        return row[0], row[1]

    async def commit(self, handle: Any) -> None:
        await handle.commit()

    async def rollback(self, handle: Any) -> None:
        await handle.rollback()

    async def close(self, handle: Any, *, discard: bool) -> None:
        if self.pool is None:
            await handle.close()
            return
        if discard:
            await handle.close()
        await self.pool.putconn(handle)

    async def lost(self, handle: Any) -> bool:
        return connection_gone(handle)

    async def status(self, xid: str, *, timeout: float) -> StatusReply:
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo, **_probe_kwargs(self.kwargs, timeout)
        )
        try:
            row = await (await conn.execute(_STATUS, (xid,))).fetchone()
        finally:
            await conn.close()
        assert row is not None
        return StatusReply(row[0], row[1])


register_adapter(lambda s: isinstance(s, ConnectionPool | str), PsycopgAdapter)
register_adapter(
    lambda s: isinstance(s, AsyncConnectionPool | str), AsyncPsycopgAdapter, asynchronous=True
)
