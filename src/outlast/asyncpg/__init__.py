"""Hardened asyncpg connections and pools: ``pip install 'outlast[asyncpg]'``.

::

    import outlast
    from outlast.asyncpg import create_pool

    db = outlast.Guard("main")
    async with create_pool("postgresql://app@db/app", guard=db) as pool:
        await pool.fetchval("SELECT 1")

See the README section "Hardened connections" for every default and why.
"""

from __future__ import annotations

from outlast.asyncpg import _transaction  # noqa: F401  (registers Guard.transaction adapters)
from outlast.asyncpg._pool import (
    MAX_QUERIES,
    HardenedConnection,
    connect,
    connect_kwargs,
    create_pool,
)

__all__ = ["MAX_QUERIES", "HardenedConnection", "connect", "connect_kwargs", "create_pool"]
