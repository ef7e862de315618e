"""A leads API on FastAPI + async SQLAlchemy, with or without outlast.

Run it::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
    OUTLAST_ENABLED=1 uvicorn fastapi_app:app --app-dir examples

The service is the reference service of ``outlast demo``,
``src/outlast/demo/_service.py`` (it ships in the package so that the demo
runs from an installed outlast): read it for the whole FastAPI + outlast
setup. In short::

    guard = outlast.Guard("main", breaker=outlast.Breaker(failure_threshold=3,
                                                          open_for=0.5, max_open_for=1.0))
    engine = outlast.sqlalchemy.create_async_engine(DATABASE_URL, guard=guard, preset=hardening)
    app = FastAPI(lifespan=lifespan)
    web = outlast.starlette.install(app, guard=guard, budget=5.0, engine=engine)

    @app.get("/api/leads")
    async def list_leads():
        async def fetch():
            async with engine.connect() as conn:
                return [dict(r._mapping) for r in await conn.execute(LATEST)]
        return await web.acall(fetch, idempotent=True)

Writes run in ``await web.atransaction(engine, insert, lead)`` (``guard.atransaction``
with the rest of the request budget as its timeout: a lost COMMIT is resolved
with ``pg_xact_status()``, never replayed; unresolved, it is a 503 whose
``error`` is ``OUTCOME_UNKNOWN``) into ``lead_writes``, whose ``lead_id`` is not
unique, so a doubled write would be visible.

``GET /api/leads``, ``POST /api/leads`` (``{"id": "<client-chosen id>",
"name": "..."}``; the same id twice stores two rows), ``GET /api/ping`` (no
database), ``/health/live``, ``/health/ready`` and, with outlast, ``/health/db``.
"""

from __future__ import annotations

from _common import BUDGET, DATABASE_URL, ENABLED

from outlast.demo._service import create_app

app = create_app(DATABASE_URL, enabled=ENABLED, budget=BUDGET)
