"""Run a statement on a connection the caller owns, inside the caller's transaction.

`enqueue(..., conn=...)` must write the job in the same transaction as the
caller's own rows (the job exists if and only if their work committed). This
module runs the INSERT on whatever connection the caller has, without
committing, rolling back or importing any driver:

- psycopg 3 ``Connection`` / ``AsyncConnection`` (also a hardened one);
- psycopg2 connections and Django's ``django.db.connection`` (DB-API
  ``cursor()`` with ``%s`` parameters);
- SQLAlchemy ``Connection`` / ``Session`` (their DB-API connection, psycopg or
  psycopg2 dialect) and ``AsyncConnection`` / ``AsyncSession``;
- asyncpg ``Connection`` (numbered ``$n`` parameters).

Drivers are recognised by duck typing, as `outlast.classify` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from outlast import ConfigurationError

__all__ = ["arun_on", "run_on"]

Rows = list[tuple[Any, ...]]
SqlFor = Callable[[str], str]  # placeholder style ("%s" or "$") -> SQL


def _module(conn: object) -> str:
    return type(conn).__module__ or ""


def run_on(conn: Any, sql_for: SqlFor, params: Sequence[Any]) -> Rows:
    """Execute on a caller's sync connection and fetch every row; never commits."""
    mod = _module(conn)
    if mod.startswith("sqlalchemy"):
        if hasattr(conn, "get_bind") and callable(getattr(conn, "connection", None)):
            conn = conn.connection()  # Session -> Connection (begins the session's transaction)
        # Through SQLAlchemy, not its DB-API connection: that way SQLAlchemy knows a
        # transaction has begun, and the caller's ``conn.commit()`` commits it.
        numeric = str(getattr(conn.dialect, "paramstyle", "")).startswith("numeric")
        result = conn.exec_driver_sql(sql_for("$" if numeric else "%s"), tuple(params))
        return [tuple(row) for row in result.fetchall()]
    if mod.startswith("psycopg") and not mod.startswith("psycopg2"):
        if _is_async(conn):
            raise ConfigurationError(
                "conn is an async psycopg connection: use `await jobs.aenqueue(..., conn=conn)`"
            )
        return list(conn.execute(sql_for("%s"), list(params)).fetchall())
    if callable(getattr(conn, "cursor", None)):
        # psycopg2, Django's connection, other DB-API connections with %s parameters.
        cur = conn.cursor()
        try:
            cur.execute(sql_for("%s"), tuple(params))
            return [tuple(row) for row in cur.fetchall()]
        finally:
            cur.close()
    raise ConfigurationError(
        f"conn must be a psycopg, psycopg2, Django or SQLAlchemy connection, "
        f"got {type(conn).__name__}"
    )


def _is_async(conn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(getattr(conn, "commit", None))


async def arun_on(conn: Any, sql_for: SqlFor, params: Sequence[Any]) -> Rows:
    """Execute on a caller's async connection and fetch every row; never commits."""
    mod = _module(conn)
    if mod.startswith("sqlalchemy"):
        if hasattr(conn, "get_bind") and callable(getattr(conn, "connection", None)):
            conn = await conn.connection()  # AsyncSession -> AsyncConnection
        # Through SQLAlchemy, not the driver: its asyncpg adapter sends BEGIN only
        # with the first statement it runs itself (the driver alone autocommits).
        numeric = str(getattr(conn.dialect, "paramstyle", "")).startswith("numeric")
        result = await conn.exec_driver_sql(sql_for("$" if numeric else "%s"), tuple(params))
        return [tuple(row) for row in result.fetchall()]
    if mod.startswith("asyncpg"):
        records = await conn.fetch(sql_for("$"), *params)
        return [tuple(r) for r in records]
    if mod.startswith("psycopg") and _is_async(conn):
        cur = await conn.execute(sql_for("%s"), list(params))
        return list(await cur.fetchall())
    if mod.startswith("psycopg"):
        raise ConfigurationError(
            "conn is a sync psycopg connection: use `jobs.enqueue(..., conn=conn)`"
        )
    raise ConfigurationError(
        f"conn must be a psycopg AsyncConnection, an asyncpg connection or a SQLAlchemy "
        f"AsyncConnection/AsyncSession, got {type(conn).__name__}"
    )
