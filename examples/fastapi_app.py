"""A leads API on FastAPI + async SQLAlchemy, with or without outlast.

Run it::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
    OUTLAST_ENABLED=1 uvicorn fastapi_app:app --app-dir examples

``GET /api/leads``, ``POST /api/leads`` (``{"id": "<client-chosen unique id>",
"name": "..."}``; the same id twice stores one row), ``GET /api/ping`` (no
database) and, with outlast, ``/health/live``, ``/health/ready``, ``/health/db``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from _common import BUDGET, CREATE_TABLE, DATABASE_URL, ENABLED
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text

log = logging.getLogger("example")

if ENABLED:
    from _common import attempt_reserve, web_guard, web_hardening

    import outlast.sqlalchemy
    from outlast.starlette import install, no_db

    guard = web_guard()
    hardening = web_hardening()
    engine = outlast.sqlalchemy.create_async_engine(DATABASE_URL, preset=hardening)
else:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(DATABASE_URL, pool_pre_ping=True)

    def no_db(view: Any) -> Any:
        return view


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(CREATE_TABLE)
    except Exception as exc:  # the database may be late: serve anyway
        log.warning("could not create the leads table yet: %s", type(exc).__name__)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
web = (
    install(
        app, guard=guard, budget=BUDGET, engine=engine, attempt_reserve=attempt_reserve(hardening)
    )
    if ENABLED
    else None
)


async def run(fn: Callable[[], Awaitable[Any]], *, idempotent: bool) -> Any:
    """Through the Guard (retries, breaker, budget) with outlast; directly without."""
    if web is None:
        return await fn()
    return await web.acall(fn, idempotent=idempotent)


class Lead(BaseModel):
    id: str
    name: str


@app.get("/api/leads")
async def list_leads() -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT id, name FROM leads ORDER BY created_at DESC, id LIMIT 50")
            )
            return [dict(r._mapping) for r in rows]

    result: list[dict[str, Any]] = await run(fetch, idempotent=True)
    return result


@app.post("/api/leads", status_code=201)
async def create_lead(lead: Lead) -> dict[str, str]:
    async def insert() -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO leads (id, name) VALUES (:id, :name) ON CONFLICT (id) DO NOTHING"
                ),
                {"id": lead.id, "name": lead.name},
            )

    # The client-chosen id makes the insert idempotent: a retry cannot double it.
    await run(insert, idempotent=True)
    return {"id": lead.id}


@app.get("/api/ping")
@no_db
async def ping() -> dict[str, bool]:
    return {"ok": True}
