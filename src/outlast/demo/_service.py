"""The reference service of the demo: a small FastAPI "leads" API on Postgres.

The same code runs two ways, chosen by ``OUTLAST_ENABLED``:

- ``1``: built with outlast: a hardened engine reporting to a `Guard`, reads
  through the Guard (retried within the request budget), writes as whole
  idempotent transactions (``ON CONFLICT DO NOTHING`` on the client's id),
  ``outlast.starlette.install`` for 503 + ``Retry-After`` and the health
  endpoints, and a background loop under a supervisor.
- ``0``: the same routes written the usual way: a plain engine, no timeouts,
  a hand-written background task that dies on its first error.

Configured by the environment: ``DATABASE_URL`` (a SQLAlchemy URL with the
``postgresql+psycopg`` driver), ``OUTLAST_ENABLED`` and ``OUTLAST_BUDGET``
(seconds, default 5). Run with
``uvicorn --factory outlast.demo._service:app_from_env``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["LeadIn", "app_from_env", "create_app"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS leads (
    id bigserial PRIMARY KEY,
    client_id text NOT NULL UNIQUE,
    name text NOT NULL,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


class LeadIn(BaseModel):
    id: str
    name: str
    email: str


def _rows(result: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": r.client_id,
            "name": r.name,
            "email": r.email,
            "created_at": r.created_at.isoformat(),
        }
        for r in result
    ]


async def _select(conn: AsyncConnection, ids: list[str] | None) -> list[dict[str, Any]]:
    if ids:
        q = text(
            "SELECT client_id, name, email, created_at FROM leads "
            "WHERE client_id = ANY(:ids) ORDER BY id"
        )
        return _rows(await conn.execute(q, {"ids": ids}))
    q = text("SELECT client_id, name, email, created_at FROM leads ORDER BY id DESC LIMIT 20")
    return _rows(await conn.execute(q))


def _ids(request: Request) -> list[str] | None:
    raw = request.query_params.get("ids")
    return [i for i in raw.split(",") if i][:500] if raw else None


def create_app(database_url: str, *, enabled: bool = True, budget: float = 5.0) -> FastAPI:
    """The leads service, with outlast (``enabled``) or without it."""
    if enabled:
        return _with_outlast(database_url, budget)
    return _plain(database_url)


def _with_outlast(database_url: str, budget: float) -> FastAPI:
    import outlast
    from outlast.sqlalchemy import create_async_engine
    from outlast.starlette import install, no_db
    from outlast.supervise import AsyncSupervisor

    guard = outlast.Guard("main")
    engine: AsyncEngine = create_async_engine(database_url, guard=guard, pool_size=10)
    supervisor = AsyncSupervisor()
    stats: dict[str, int] = {"leads": 0}

    @outlast.loop(every=1.0, guard=guard, name="count_leads")
    async def count_leads() -> None:
        async with engine.connect() as conn:
            stats["leads"] = int(
                (await conn.execute(text("SELECT count(*) FROM leads"))).scalar_one()
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.execute(text(SCHEMA))
        count_leads.start(supervisor)
        try:
            yield
        finally:
            await supervisor.stop(timeout=5)
            await engine.dispose()

    app = FastAPI(title="leads (with outlast)", lifespan=lifespan)

    @app.get("/api/leads")
    async def list_leads(request: Request) -> dict[str, Any]:
        ids = _ids(request)

        async def fetch() -> list[dict[str, Any]]:
            async with engine.connect() as conn:
                return await _select(conn, ids)

        return {"items": await web.acall(fetch, idempotent=True)}

    @app.post("/api/leads", status_code=201)
    async def create_lead(lead: LeadIn) -> dict[str, Any]:
        async def insert(conn: AsyncConnection) -> None:
            await conn.execute(
                text(
                    "INSERT INTO leads (client_id, name, email) VALUES (:id, :name, :email) "
                    "ON CONFLICT (client_id) DO NOTHING"
                ),
                lead.model_dump(),
            )

        await guard.atransaction(engine, insert, op="create_lead")
        return {"id": lead.id}

    @app.get("/api/ping")
    @no_db
    async def ping() -> dict[str, Any]:
        return {"ok": True, "leads_seen_by_loop": stats["leads"]}

    web = install(app, guard=guard, budget=budget, engine=engine, supervisor=supervisor)
    return app


def _plain(database_url: str) -> FastAPI:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url, pool_size=10)
    state: dict[str, Any] = {"task": None, "leads": 0}

    async def count_leads_forever() -> None:
        while True:  # the usual hand-written loop: the first error kills it
            async with engine.connect() as conn:
                state["leads"] = int(
                    (await conn.execute(text("SELECT count(*) FROM leads"))).scalar_one()
                )
            await asyncio.sleep(1.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.execute(text(SCHEMA))
        state["task"] = asyncio.create_task(count_leads_forever())
        try:
            yield
        finally:
            state["task"].cancel()
            await asyncio.gather(state["task"], return_exceptions=True)
            await engine.dispose()

    app = FastAPI(title="leads (plain)", lifespan=lifespan)

    @app.get("/api/leads")
    async def list_leads(request: Request) -> dict[str, Any]:
        async with engine.connect() as conn:
            return {"items": await _select(conn, _ids(request))}

    @app.post("/api/leads", status_code=201)
    async def create_lead(lead: LeadIn) -> dict[str, Any]:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO leads (client_id, name, email) VALUES (:id, :name, :email)"),
                lead.model_dump(),
            )
        return {"id": lead.id}

    @app.get("/api/ping")
    async def ping() -> dict[str, Any]:
        return {"ok": True, "leads_seen_by_loop": state["leads"]}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        task = state["task"]
        alive = task is not None and not task.done()
        return JSONResponse(
            {
                "status": "pass" if alive else "fail",
                "checks": {
                    "loop:count_leads": [
                        {"componentType": "loop", "status": "pass" if alive else "fail"}
                    ]
                },
            },
            status_code=200 if alive else 503,
        )

    return app


def app_from_env() -> FastAPI:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError(
            "set DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/leads)"
        )
    enabled = os.environ.get("OUTLAST_ENABLED", "1").strip().lower() not in {
        "0",
        "false",
        "no",
        "off",
    }
    budget = float(os.environ.get("OUTLAST_BUDGET", "5"))
    return create_app(url, enabled=enabled, budget=budget)
