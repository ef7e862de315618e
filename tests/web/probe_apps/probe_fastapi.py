"""The FastAPI probe service: an async and a sync route on hardened engines, used directly.

The hardened engines report to the Guard and check it at every connect: inside
the admitted probe (the async route in the middleware's task, the sync one in
the thread pool with a copy of its context) those checks must let it through.
"""

from __future__ import annotations

from typing import Any

from _probe_common import (
    BUDGET,
    DATABASE_URL,
    HOLD_SQL,
    STATEMENT_TIMEOUT_MS,
    Unrelated,
    entered,
    guard,
    stats,
)
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.pool import NullPool

import outlast
from outlast.sqlalchemy import create_async_engine, create_engine
from outlast.starlette import install, no_db

hardening = outlast.Hardening(
    name="probe-test", connect_timeout=2.0, statement_timeout=STATEMENT_TIMEOUT_MS / 1000
)
# NullPool: one connection per request that reaches the database.
async_engine = create_async_engine(DATABASE_URL, guard=guard, preset=hardening, poolclass=NullPool)
sync_engine = create_engine(DATABASE_URL, guard=guard, preset=hardening, poolclass=NullPool)
app = FastAPI()
install(app, guard=guard, budget=BUDGET)


@app.get("/api/hold")
async def hold() -> Any:
    entered.add()
    async with async_engine.begin() as conn:
        await conn.execute(text(HOLD_SQL))
    return {"ok": True}


@app.get("/api/hold-sync")
def hold_sync() -> Any:
    entered.add()
    with sync_engine.begin() as conn:
        conn.execute(text(HOLD_SQL))
    return {"ok": True}


@app.get("/api/boom")
async def boom() -> Any:
    entered.add()
    raise Unrelated("a bug in the view")


@app.get("/api/cached")
async def cached() -> Any:
    # An ordinary (unmarked) route that happens not to need the database.
    return {"ok": True}


@app.get("/api/stats")
@no_db
async def get_stats() -> Any:
    return stats()


@app.get("/api/ping")
@no_db
async def ping() -> Any:
    return {"ok": True}
