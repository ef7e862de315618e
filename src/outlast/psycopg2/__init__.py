"""A hardened, leak-free psycopg2 pool: ``pip install 'outlast[psycopg2]'``.

::

    import outlast
    from outlast.psycopg2 import ConnectionPool

    db = outlast.Guard("main")
    pool = ConnectionPool("host=db dbname=app", guard=db, max_size=10)
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")

See the README section "Hardened connections" for every default and why.
"""

from __future__ import annotations

from outlast._core.transactions.adapters import register_adapter
from outlast.psycopg2 import _transaction  # noqa: F401  (registers Guard.transaction adapters)
from outlast.psycopg2._pool import (
    ConnectionPool,
    HardenedConnection,
    PoolTimeout,
    connect,
    connect_kwargs,
)
from outlast.psycopg2._transaction import Psycopg2Adapter

# Guard.transaction(pool) knows psycopg2's own pools; teach it ours too.
register_adapter(lambda source: isinstance(source, ConnectionPool), Psycopg2Adapter)

__all__ = ["ConnectionPool", "HardenedConnection", "PoolTimeout", "connect", "connect_kwargs"]
