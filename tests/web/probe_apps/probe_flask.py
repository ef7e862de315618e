"""The Flask probe service: views use a plain SQLAlchemy engine directly (outlast hardens it)."""

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
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from outlast.flask import Outlast, no_db

# NullPool: every request that reaches the database opens its own connection,
# so the proxy's connection count is the number of requests that got through.
engine = create_engine(
    DATABASE_URL,
    poolclass=NullPool,
    connect_args={
        "connect_timeout": 2,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    },
)
app = Flask(__name__)
# engine=: outlast hardens it with the Guard (its checkouts are where a request
# is admitted, on first use of the database).
Outlast(app, guard=guard, budget=BUDGET, engine=engine)


@app.get("/api/hold")
def hold() -> Any:
    entered.add()
    with engine.begin() as conn:
        conn.execute(text(HOLD_SQL))
    return {"ok": True}


@app.get("/api/boom")
def boom() -> Any:
    entered.add()
    raise Unrelated("a bug in the view")


@app.get("/api/cached")
def cached() -> Any:
    # An ordinary (unmarked) route that happens not to need the database.
    return {"ok": True}


@app.get("/api/stats")
@no_db
def get_stats() -> Any:
    return stats()


@app.get("/api/ping")
@no_db
def ping() -> Any:
    return {"ok": True}
