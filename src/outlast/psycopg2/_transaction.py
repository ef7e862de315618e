"""`Guard.transaction` adapter for psycopg2 pools.

Source: any `psycopg2.pool.AbstractConnectionPool` (``SimpleConnectionPool``,
``ThreadedConnectionPool``, outlast's hardened pool). ``fn`` receives the
connection with a transaction open; a broken connection is given back with
``putconn(conn, close=True)``. The COMMIT-outcome question is asked on a new
direct connection made with the pool's own connect arguments.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg2
from psycopg2.pool import AbstractConnectionPool

from outlast._core.transactions.adapters import (
    MARKER_SQL,
    StatusReply,
    connection_gone,
    register_adapter,
    status_sql,
)

__all__ = ["Psycopg2Adapter"]

_STATUS = status_sql("%s")


def _execute(conn: Any, sql: str, params: tuple[Any, ...] | None = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone() if cur.description is not None else None


class Psycopg2Adapter:
    """``fn(conn)`` on a psycopg2 connection pool."""

    def __init__(self, pool: AbstractConnectionPool) -> None:
        self.pool = pool

    def open(self) -> Any:
        return self.pool.getconn()

    def begin(self, handle: Any) -> Any:
        # psycopg2 opens the transaction with the first statement; in
        # autocommit mode commit()/rollback() are no-ops, so be explicit.
        if handle.autocommit:
            _execute(handle, "BEGIN")
        return handle

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        row = _execute(handle, MARKER_SQL)
        return row[0], row[1]

    def commit(self, handle: Any) -> None:
        if handle.autocommit:
            _execute(handle, "COMMIT")
        else:
            handle.commit()

    def rollback(self, handle: Any) -> None:
        if handle.autocommit:
            _execute(handle, "ROLLBACK")
        else:
            handle.rollback()

    def close(self, handle: Any, *, discard: bool) -> None:
        self.pool.putconn(handle, close=discard or bool(handle.closed))

    def lost(self, handle: Any) -> bool:
        return connection_gone(handle)

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        args: tuple[Any, ...] = getattr(self.pool, "_args", ())
        kwargs: dict[str, Any] = dict(getattr(self.pool, "_kwargs", {}))
        limit = max(2, math.ceil(timeout))
        configured = kwargs.get("connect_timeout")
        if configured is None or int(configured) <= 0 or int(configured) > limit:
            kwargs["connect_timeout"] = limit
        conn = psycopg2.connect(*args, **kwargs)
        try:
            conn.autocommit = True
            row = _execute(conn, _STATUS, (xid,))
        finally:
            conn.close()
        return StatusReply(row[0], row[1])


register_adapter(lambda s: isinstance(s, AbstractConnectionPool), Psycopg2Adapter)
