"""The reference service: a small FastAPI "leads" API on PostgreSQL, with or without outlast.

`outlast demo` drills it (it ships in the package, so the demo runs from an
installed outlast) and the web tests run it through ``examples/fastapi_app.py``.
The same routes run two ways:

- ``enabled=True``: built with outlast. One `Guard` for everything: the
  hardened engine reports its faults to it (and refuses checkouts while its
  breaker is open), reads run through it within the request budget, and each
  write is one ``web.atransaction`` (``guard.atransaction`` within the request
  budget): re-run whole when a fault struck before COMMIT, and when the
  connection died during COMMIT, resolved with ``pg_xact_status()`` instead of
  being sent again (an unresolved one, or a budget that ran out meanwhile, is a
  503 whose problem body says ``"error": "OUTCOME_UNKNOWN"``).
  `outlast.starlette.install` answers 503 + ``Retry-After`` and serves the
  health endpoints, and a background loop runs under a supervisor.
- ``enabled=False``: the same routes written the usual way: a plain engine
  (``pool_pre_ping``), a bare INSERT in a transaction with no retry, no
  timeouts, a hand-written background task that dies on its first error,
  hand-written health routes.

Writes go to ``lead_writes``, whose ``lead_id`` is *not* unique (the key is a
``bigserial``): nothing in the database hides a write applied twice, so the
drill's "no write doubled" check means something.

A third build, ``mode="seeds"``, is the same service fixed by hand the way
teams usually do it (retry decorators with exponential backoff, a 503
handler, ``pool_pre_ping``): `outlast.demo._seeds`.

Routes: ``GET /api/leads`` (the latest 50, or ``?ids=a,b``; rows are
``{"id": <lead id>, "name", "row_id"}``, one per stored write), ``POST
/api/leads`` (``{"id": "<client-chosen id>", "name": "..."}``; the same id
twice stores two rows), ``GET /api/ping`` (no database), ``/health/live``,
``/health/ready`` and, with outlast, ``/health/db`` and ``/metrics`` (when
prometheus-client is installed).

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
from sqlalchemy.ext.asyncio import AsyncConnection

from outlast.demo._leads import (
    COUNT,
    INSERT,
    LeadIn,
    add_hand_written_routes,
    create_table,
    parse_ids,
    select,
)
from outlast.demo._seeds import create_seeds_app
from outlast.demo._settings import (
    attempt_reserve,
    settings_from_env,
    web_guard,
    web_hardening,
)

__all__ = ["LeadIn", "app_from_env", "create_app"]

log = logging.getLogger("outlast.demo")


def create_app(
    database_url: str, *, enabled: bool = True, budget: float = 5.0, mode: str | None = None
) -> FastAPI:
    """The leads service, with outlast (``enabled``) or without it.

    ``mode`` (``outlast``, ``plain`` or ``seeds``), when given, chooses instead
    of ``enabled``; ``seeds`` is the usual fix by hand (`outlast.demo._seeds`).
    """
    mode = mode or ("outlast" if enabled else "plain")
    if mode == "outlast":
        return _with_outlast(database_url, budget)
    if mode == "seeds":
        return create_seeds_app(database_url)
    if mode == "plain":
        return _plain(database_url)
    raise ValueError(f"mode must be outlast, plain or seeds, not {mode!r}")


def app_from_env() -> FastAPI:
    """`create_app` configured by ``DATABASE_URL``, ``OUTLAST_ENABLED`` or ``OUTLAST_MODE``,
    and ``OUTLAST_BUDGET``."""
    settings = settings_from_env()
    return create_app(settings.database_url, budget=settings.budget, mode=settings.mode)


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
    reserve = attempt_reserve(hardening, budget)
    supervisor = AsyncSupervisor()
    seen = {"leads": 0}

    @outlast.loop(every=1.0, guard=guard, name="count_leads")
    async def count_leads() -> None:
        async with engine.connect() as conn:
            seen["leads"] = int((await conn.execute(COUNT)).scalar_one())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await create_table(engine)
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
        attempt_reserve=reserve,
    )
    _serve_metrics(app)

    @app.get("/api/leads")
    async def list_leads(ids: str | None = None) -> list[dict[str, Any]]:
        async def fetch() -> list[dict[str, Any]]:
            async with engine.connect() as conn:
                return await select(conn, parse_ids(ids))

        # Through the Guard: retried within the budget, 503 when the breaker is open.
        result: list[dict[str, Any]] = await web.acall(fetch, idempotent=True)
        return result

    async def insert(conn: AsyncConnection, lead: LeadIn) -> int:
        return int((await conn.execute(INSERT, {"id": lead.id, "name": lead.name})).scalar_one())

    @app.post("/api/leads", status_code=201)
    async def create_lead(lead: LeadIn) -> dict[str, Any]:
        # One transaction within the rest of the request budget (minus one
        # attempt), retried whole if a fault strikes before COMMIT. If the
        # connection dies during COMMIT, the Guard asks pg_xact_status() on a
        # fresh connection: committed -> this returns the first run's row_id,
        # nothing is inserted twice; aborted -> it runs again; still unknown
        # -> 503 OUTCOME_UNKNOWN (also when the budget runs out meanwhile).
        row_id = await web.atransaction(engine, insert, lead)
        return {"id": lead.id, "row_id": row_id}

    @app.get("/api/ping")
    @no_db
    async def ping() -> dict[str, Any]:
        return {"ok": True, "leads_seen_by_loop": seen["leads"]}

    return app


def _serve_metrics(app: FastAPI) -> None:
    """``GET /metrics`` (outlast.prometheus) when prometheus-client is installed.

    The drill scrapes it around each scenario and shows what the Guard, the
    pool and the web layer counted (outages, retries, breaker, 503s by reason).
    """
    try:
        import outlast.prometheus
    except ModuleNotFoundError:  # the demo runs without the metrics view
        return
    outlast.prometheus.install(app)


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
        await create_table(engine)
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
            return await select(conn, parse_ids(ids))

    @app.post("/api/leads", status_code=201)
    async def create_lead(lead: LeadIn) -> dict[str, Any]:
        async with engine.begin() as conn:  # a lost COMMIT reply is a 500, applied or not
            result = await conn.execute(INSERT, {"id": lead.id, "name": lead.name})
            row_id = int(result.scalar_one())
        return {"id": lead.id, "row_id": row_id}

    add_hand_written_routes(app, state)
    return app
