"""The reference "leads" service fixed the way teams usually fix outages by hand.

The third service of `outlast demo` (``OUTLAST_MODE=seeds``): the same routes
and table as `outlast.demo._service`, with the fix that real services shipped
after their database went away, written as they wrote it (their deployment
notes describe it; it is the usual fix, not a strawman):

- a retry decorator with exponential backoff (1 s, 2 s, 4 s, 8 s: five tries,
  the ``[DB_DOWN] op=... try=1/5 sleep=1s`` log line) around whole request
  handlers and around the background loop's database call;
- an engine with ``pool_pre_ping=True``, ``pool_recycle=300`` and a 30 s
  ``statement_timeout``;
- exception handlers that turn ``OperationalError`` and ``DisconnectionError``
  into a 503 with the teams' JSON body (``{"error": "SERVICE_UNAVAILABLE",
  "detail": "Database temporarily unavailable", "status": 503}``) instead of
  a 500;
- a background loop that catches database errors, backs off
  ``min(2 ** errors, 60)`` seconds and logs ``[DB_DOWN]`` / ``[DB_RECOVERED]``;
- a hand-written ``/health/ready`` that reports whether that loop still runs.

What it does not have is what outlast adds: the retry knows nothing of the
request budget (a request can wait 15 s in backoff while its client gave up
long ago), it replays a whole write whose COMMIT reply was lost (the write is
stored twice), it has no connect or client-side timeouts (a blackholed
database hangs requests and the loop), no breaker, and a 503 without
``Retry-After``. The drill measures what that costs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outlast.demo._leads import (
    COUNT,
    INSERT,
    LeadIn,
    add_hand_written_routes,
    create_table,
    parse_ids,
    select,
)

__all__ = ["create_seeds_app", "db_retry"]

log = logging.getLogger("outlast.demo.seeds")

P = ParamSpec("P")
T = TypeVar("T")

#: What the teams' handlers and retry helper treat as "the database is down".
DB_ERRORS = (OperationalError, DisconnectionError)


def db_retry(
    op: str, *, attempts: int = 5, base: float = 1.0, cap: float = 16.0
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Retry an async function on database errors with exponential backoff.

    The seeds' helper: ``base * 2 ** (try - 1)`` seconds between tries, up to
    `attempts` tries, then the last error goes up (to the 503 handler).
    """

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            for attempt in range(1, attempts + 1):
                try:
                    result = await fn(*args, **kwargs)
                except DB_ERRORS as exc:
                    if attempt == attempts:
                        raise
                    sleep = min(base * 2 ** (attempt - 1), cap)
                    log.warning(
                        "[DB_DOWN] op=%s try=%d/%d sleep=%gs reason=%s",
                        op,
                        attempt,
                        attempts,
                        sleep,
                        type(getattr(exc, "orig", exc)).__name__,
                    )
                    await asyncio.sleep(sleep)
                else:
                    if attempt > 1:
                        log.info("[DB_RECOVERED] op=%s after %d attempts", op, attempt)
                    return result
            raise AssertionError("unreachable: the last try returns or raises")

        return wrapper

    return decorate


def _engine(database_url: str) -> AsyncEngine:
    # "pool_pre_ping=True pool_recycle=300s (Neon-optimized)", plus the
    # 30 s statement_timeout their summary added.
    return create_async_engine(
        database_url,
        pool_size=10,
        pool_pre_ping=True,
        pool_recycle=300,
        connect_args={"options": "-c statement_timeout=30000"},
    )


def create_seeds_app(database_url: str) -> FastAPI:
    """The leads service with the seeds' fix (same routes as `create_app`)."""
    engine = _engine(database_url)
    state: dict[str, Any] = {"task": None, "leads": 0}

    @db_retry("count_leads")
    async def count_leads() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(COUNT)).scalar_one())

    async def count_leads_forever() -> None:
        # The shape of their session processor: catch database errors, back
        # off, log, never let the loop end on an outage.
        errors = 0
        while True:
            try:
                state["leads"] = await count_leads()
                if errors:
                    log.info("[DB_RECOVERED] op=count_leads_loop after %d errors", errors)
                errors = 0
            except DB_ERRORS as exc:
                errors += 1
                backoff = min(2**errors, 60)
                log.error(
                    "[DB_DOWN] op=count_leads_loop errors=%d sleep=%ds reason=%s",
                    errors,
                    backoff,
                    type(getattr(exc, "orig", exc)).__name__,
                )
                await asyncio.sleep(backoff)
                continue
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

    app = FastAPI(title="leads (the seeds' fix)", lifespan=lifespan)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Their error handler: log, answer 503 with their JSON body. The
        # connection was already rolled back and returned by `engine.begin()`.
        log.error("[DB_DOWN] database error during %s %s", request.method, request.url.path)
        return JSONResponse(
            {
                "error": "SERVICE_UNAVAILABLE",
                "detail": "Database temporarily unavailable",
                "status": 503,
            },
            status_code=503,
        )

    for error in DB_ERRORS:
        app.add_exception_handler(error, unavailable)

    @app.get("/api/leads")
    @db_retry("list_leads")
    async def list_leads(ids: str | None = None) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return await select(conn, parse_ids(ids))

    @app.post("/api/leads", status_code=201)
    @db_retry("create_lead")  # the whole handler: a lost COMMIT reply is sent again
    async def create_lead(lead: LeadIn) -> dict[str, Any]:
        async with engine.begin() as conn:
            result = await conn.execute(INSERT, {"id": lead.id, "name": lead.name})
            row_id = int(result.scalar_one())
        return {"id": lead.id, "row_id": row_id}

    add_hand_written_routes(app, state)
    return app
