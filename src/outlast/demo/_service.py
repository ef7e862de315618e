"""The reference service: a small FastAPI "leads" API on PostgreSQL, with or without outlast.

`outlast demo` drills it (it ships in the package, so the demo runs from an
installed outlast) and the web tests run it through ``examples/fastapi_app.py``.
The same routes run two ways:

- ``enabled=True``: built with outlast. One `Guard` for everything: the
  hardened engine reports its faults to it (and refuses checkouts while its
  breaker is open), reads and writes run through it within the request budget
  (writes are idempotent: ``ON CONFLICT DO NOTHING`` on the client-chosen id),
  `outlast.starlette.install` answers 503 + ``Retry-After`` and serves the
  health endpoints, and a background loop runs under a supervisor.
- ``enabled=False``: the same routes written the usual way: a plain engine
  (``pool_pre_ping``), no timeouts, a hand-written background task that dies
  on its first error, hand-written health routes.

Routes: ``GET /api/leads`` (the latest 50, or ``?ids=a,b``), ``POST
/api/leads`` (``{"id": "<client-chosen unique id>", "name": "..."}``; the
same id twice stores one row), ``GET /api/ping`` (no database),
``/health/live``, ``/health/ready`` and, with outlast, ``/health/db``.

Run it (settings from the environment, see `outlast.demo._settings`)::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
    OUTLAST_ENABLED=1 uvicorn --factory outlast.demo._service:app_from_env
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._settings import CREATE_TABLE, attempt_reserve, settings_from_env, web_guard, web_hardening

__all__ = ["LeadIn", "app_from_env", "create_app"]

log = logging.getLogger("outlast.demo")

LATEST = text("SELECT id, name FROM leads ORDER BY created_at DESC, id LIMIT 50")
BY_IDS = text("SELECT id, name FROM leads WHERE id = ANY(:ids) ORDER BY created_at, id")
INSERT = text("INSERT INTO leads (id, name) VALUES (:id, :name) ON CONFLICT (id) DO NOTHING")
COUNT = text("SELECT count(*) FROM leads")


class LeadIn(BaseModel):
    id: str
    name: str


def create_app(database_url: str, *, enabled: bool = True, budget: float = 5.0) -> FastAPI:
    """The leads service, with outlast (``enabled``) or without it."""
    if enabled:
        return _with_outlast(database_url, budget)
    return _plain(database_url)


def app_from_env() -> FastAPI:
    """`create_app` configured by ``DATABASE_URL``, ``OUTLAST_ENABLED``, ``OUTLAST_BUDGET``."""
    settings = settings_from_env()
    return create_app(settings.database_url, enabled=settings.enabled, budget=settings.budget)


async def _select(conn: AsyncConnection, ids: list[str] | None) -> list[dict[str, Any]]:
    rows = await conn.execute(BY_IDS, {"ids": ids}) if ids else await conn.execute(LATEST)
    return [dict(r._mapping) for r in rows]


def _parse_ids(raw: str | None) -> list[str] | None:
    return [i for i in raw.split(",") if i][:500] if raw else None


async def _create_table(engine: AsyncEngine) -> None:
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(CREATE_TABLE)
    except Exception as exc:  # the database may be late: serve anyway
        log.warning("could not create the leads table yet: %s", type(exc).__name__)


def _with_outlast(database_url: str, budget: float) -> FastAPI:
    import outlast
    from outlast.sqlalchemy import create_async_engine
    from outlast.starlette import install, no_db
    from outlast.supervise import AsyncSupervisor

    guard = web_guard()
    hardening = web_hardening()
    # guard=: the pool reports faults to the Guard the web layer uses (so a
    # failed ping or connect opens the breaker) and does not ping a dead
    # server while the breaker is open.
    engine = create_async_engine(database_url, guard=guard, preset=hardening, pool_size=10)
    supervisor = AsyncSupervisor()
    seen = {"leads": 0}

    @outlast.loop(every=1.0, guard=guard, name="count_leads")
    async def count_leads() -> None:
        async with engine.connect() as conn:
            seen["leads"] = int((await conn.execute(COUNT)).scalar_one())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _create_table(engine)
        count_leads.start(supervisor)
        try:
            yield
        finally:
            await supervisor.stop(timeout=5)
            await engine.dispose()

    app = FastAPI(title="leads (with outlast)", lifespan=lifespan)
    web = install(
        app,
        guard=guard,
        budget=budget,
        engine=engine,  # for /health/db
        supervisor=supervisor,  # its loops show in /health/ready
        attempt_reserve=attempt_reserve(hardening, budget),
    )

    @app.get("/api/leads")
    async def list_leads(ids: str | None = None) -> list[dict[str, Any]]:
        async def fetch() -> list[dict[str, Any]]:
            async with engine.connect() as conn:
                return await _select(conn, _parse_ids(ids))

        # Through the Guard: retried within the budget, 503 when the breaker is open.
        result: list[dict[str, Any]] = await web.acall(fetch, idempotent=True)
        return result

    @app.post("/api/leads", status_code=201)
    async def create_lead(lead: LeadIn) -> dict[str, str]:
        async def insert() -> None:
            async with engine.begin() as conn:
                await conn.execute(INSERT, {"id": lead.id, "name": lead.name})

        # The client-chosen id makes the insert idempotent: a retry cannot double it.
        await web.acall(insert, idempotent=True)
        return {"id": lead.id}

    @app.get("/api/ping")
    @no_db
    async def ping() -> dict[str, Any]:
        return {"ok": True, "leads_seen_by_loop": seen["leads"]}

    return app


def _plain(database_url: str) -> FastAPI:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url, pool_size=10, pool_pre_ping=True)
    state: dict[str, Any] = {"task": None, "leads": 0}

    async def count_leads_forever() -> None:
        while True:  # the usual hand-written loop: the first error kills it
            async with engine.connect() as conn:
                state["leads"] = int((await conn.execute(COUNT)).scalar_one())
            await asyncio.sleep(1.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _create_table(engine)
        state["task"] = asyncio.create_task(count_leads_forever())
        try:
            yield
        finally:
            state["task"].cancel()
            await asyncio.gather(state["task"], return_exceptions=True)
            await engine.dispose()

    app = FastAPI(title="leads (plain)", lifespan=lifespan)

    @app.get("/api/leads")
    async def list_leads(ids: str | None = None) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return await _select(conn, _parse_ids(ids))

    @app.post("/api/leads", status_code=201)
    async def create_lead(lead: LeadIn) -> dict[str, str]:
        async with engine.begin() as conn:
            await conn.execute(INSERT, {"id": lead.id, "name": lead.name})
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
        status = "pass" if alive else "fail"
        return JSONResponse(
            {
                "status": status,
                "checks": {"loop:count_leads": [{"componentType": "loop", "status": status}]},
            },
            status_code=200 if alive else 503,
        )

    return app
