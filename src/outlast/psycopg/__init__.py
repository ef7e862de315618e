"""Hardened psycopg 3 connections and pools: ``pip install 'outlast[psycopg]'``.

::

    import outlast
    from outlast.psycopg import ConnectionPool

    db = outlast.Guard("main")
    pool = ConnectionPool("host=db dbname=app", guard=db, open=True)
    with pool.connection() as conn:
        conn.execute("SELECT 1")

See the README section "Hardened connections" for every default and why.
"""

from __future__ import annotations

from outlast.psycopg import _transaction  # noqa: F401  (registers Guard.transaction adapters)
from outlast.psycopg._pool import (
    AsyncConnectionPool,
    AsyncHardenedConnection,
    ConnectionPool,
    HardenedConnection,
    aconnect,
    connect,
    connect_kwargs,
)

__all__ = [
    "AsyncConnectionPool",
    "AsyncHardenedConnection",
    "ConnectionPool",
    "HardenedConnection",
    "aconnect",
    "connect",
    "connect_kwargs",
]
