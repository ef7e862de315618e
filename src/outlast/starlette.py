"""Starlette and FastAPI: 503 with ``Retry-After`` while the database is down, honest health.

::

    from fastapi import FastAPI
    import outlast
    from outlast.starlette import install, no_db

    guard = outlast.Guard("main")
    app = FastAPI()
    web = install(app, guard=guard, budget=5.0, engine=async_engine)

    @app.get("/api/leads")
    async def leads():
        return await web.acall(fetch_leads, idempotent=True)   # deadline = rest of budget

    @app.get("/api/ping")
    @no_db
    async def ping(): return {"ok": True}

`install()` adds exception handlers for `DatabaseUnavailable` and
`CommitOutcomeUnknown`, a pure-ASGI middleware, and the health routes
(``/health/live``, ``/health/ready``, ``/health/db``). For database routes the
middleware starts the request budget, calls ``guard.check()`` before the
route runs (an open breaker answers 503 in microseconds), wraps the route in
``asyncio.timeout(budget)`` until the response starts (a timeout is a 503),
and maps every classified database fault to a 503 ``application/problem+json``
(PERMANENT faults to a generic 500) after rolling back `session`, logging the
fault once and reporting it to the Guard.

Database routes: every route except the health endpoints, `exempt` path
prefixes and endpoints marked `no_db` (``db_routes="all"``, the default), or
only endpoints marked `db_route` (``db_routes="marked"``). In FastAPI the
dependency `require_database` marks a route as well.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import CommitOutcomeUnknown, DatabaseUnavailable
from ._health import (
    HealthAnswer,
    async_engine_ping,
    health_answer,
    health_db,
    health_db_async,
    health_paths,
)
from ._web import (
    DEFAULT_BUDGET,
    DEFAULT_HEALTH_TIMEOUT,
    NO_ROUTE,
    PROBLEM_CONTENT_TYPE,
    DbRoutes,
    Mapped,
    RequestBudget,
    RequestBudgetExceeded,
    acall_within_budget,
    budget_exceeded,
    budget_remaining,
    db_route,
    no_db,
    record_success,
)
from ._web_base import WebBase

if TYPE_CHECKING:
    from ._guard import Guard

__all__ = [
    "Outlast",
    "OutlastMiddleware",
    "RequestBudgetExceeded",
    "budget_remaining",
    "db_route",
    "install",
    "no_db",
    "require_database",
]

_ROLLBACK_TIMEOUT = 1.0


class Outlast(WebBase):
    """What `install()` returns (also at ``app.state.outlast``).

    Takes the options of `install`; `name` names the Guard made when none is given.
    """

    def __init__(
        self,
        *,
        guard: Guard | None = None,
        budget: float = DEFAULT_BUDGET,
        health_prefix: str = "/health",
        ready_fail_on_db: bool = False,
        supervisor: Any = None,
        session: Any = None,
        engine: Any = None,
        ping: Callable[[], Any] | None = None,
        db_routes: DbRoutes = "all",
        exempt: Sequence[str] = (),
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        ready: Callable[[], bool] | None = None,
        attempt_reserve: float = 0.0,
        record_faults: bool = True,
        name: str = "default",
    ) -> None:
        super().__init__(
            guard=guard,
            budget=budget,
            health_prefix=health_prefix,
            ready_fail_on_db=ready_fail_on_db,
            supervisor=supervisor,
            session=session,
            engine=engine,
            ping=ping,
            db_routes=db_routes,
            exempt=exempt,
            health_timeout=health_timeout,
            ready=ready,
            attempt_reserve=attempt_reserve,
            record_faults=record_faults,
        )
        if guard is None:
            from ._guard import Guard

            self.guard = Guard(name)
        self.routes: Sequence[Any] = ()

    # -- what endpoints use -------------------------------------------------------

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        """``guard.acall`` with the rest of the request budget as deadline."""
        return await acall_within_budget(
            self.guard, fn, *args, reserve=self.config.attempt_reserve, **kwargs
        )

    # -- fault handling ---------------------------------------------------------

    async def handle(self, exc: BaseException, scope: Scope) -> Mapped | None:
        """Map, roll back, record and log one exception (None: not a database fault)."""
        mapped = self.map_fault(exc)
        if mapped is None:
            return None
        route = _route(scope)
        scope["outlast.fault"] = True
        await self._rollback()
        self.report_fault(exc, mapped, route)
        return mapped

    async def _rollback(self) -> None:
        session = self.session
        if session is None:
            return
        try:
            result = session.rollback()
            if inspect.isawaitable(result):
                async with asyncio.timeout(_ROLLBACK_TIMEOUT):
                    await result
        except Exception:
            pass

    # -- health -----------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        """``/health/live``: never touches the database."""
        return _response(self.live_answer())

    async def ready_endpoint(self, request: Request) -> Response:
        """``/health/ready``: 200 (``warn``) during an outage unless `ready_fail_on_db`."""
        return _response(self.ready_answer())

    async def db(self, request: Request) -> Response:
        """``/health/db``: ``SELECT 1`` through the Guard; 503 while the database is down."""
        ping = self.ping
        engine = self.engine
        if ping is None and engine is not None and hasattr(engine, "sync_engine"):
            ping = async_engine_ping(engine)
        if ping is not None and inspect.iscoroutinefunction(ping):
            timeout = self.config.health_timeout
            return _response(health_answer(*await health_db_async(self.guard, ping, timeout)))
        # A blocking ping runs in a thread, so a slow database never blocks the event loop.
        probe = self.sync_probe()
        return _response(health_answer(*await asyncio.to_thread(health_db, self.guard, probe)))

    def is_db_route(self, scope: Scope) -> bool:
        """True when the request in `scope` goes to a database route (see `WebConfig`)."""
        return self.config.is_db_route(scope["path"], _endpoint(self.routes, scope))


class OutlastMiddleware:
    """Pure-ASGI middleware: breaker check, request budget, fault mapping."""

    def __init__(self, app: ASGIApp, outlast: Outlast) -> None:
        self.app = app
        self.outlast = outlast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI request; answer database faults raised before the response starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ol = self.outlast
        started = False
        status = 0
        timeout_cm: asyncio.Timeout | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                if timeout_cm is not None:
                    timeout_cm.reschedule(None)  # the budget covers the work, not streaming
            await send(message)

        if not ol.is_db_route(scope):
            try:
                await self.app(scope, receive, send_wrapper)
            except Exception as exc:
                if started or not await self._answer(exc, scope, send):
                    raise
            return

        token = ol.budget.start()
        try:
            ol.guard.check()
            async with asyncio.timeout(ol.budget.seconds) as timeout_cm:
                await self.app(scope, receive, send_wrapper)
            if status < 500 and not scope.get("outlast.fault"):
                record_success(ol.guard, _route(scope))
        except Exception as exc:
            if timeout_cm is not None and timeout_cm.expired() and isinstance(exc, TimeoutError):
                exc = budget_exceeded(ol.guard)
            if started or not await self._answer(exc, scope, send):
                raise
        finally:
            RequestBudget.finish(token)

    async def _answer(self, exc: BaseException, scope: Scope, send: Send) -> bool:
        mapped = await self.outlast.handle(exc, scope)
        if mapped is None:
            return False
        headers = [
            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
            (b"content-length", str(len(mapped.body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in mapped.headers),
        ]
        await send({"type": "http.response.start", "status": mapped.status, "headers": headers})
        await send({"type": "http.response.body", "body": mapped.body})
        return True


def install(
    app: Starlette,
    *,
    guard: Guard | None = None,
    budget: float = DEFAULT_BUDGET,
    health_prefix: str = "/health",
    ready_fail_on_db: bool = False,
    supervisor: Any = None,
    session: Any = None,
    engine: Any = None,
    ping: Callable[[], Any] | None = None,
    db_routes: DbRoutes = "all",
    exempt: Sequence[str] = (),
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
    ready: Callable[[], bool] | None = None,
    attempt_reserve: float = 0.0,
    record_faults: bool = True,
) -> Outlast:
    """Install outlast on a Starlette or FastAPI app (before it starts serving)."""
    ol = Outlast(
        guard=guard,
        budget=budget,
        health_prefix=health_prefix,
        ready_fail_on_db=ready_fail_on_db,
        supervisor=supervisor,
        session=session,
        engine=engine,
        ping=ping,
        db_routes=db_routes,
        exempt=exempt,
        health_timeout=health_timeout,
        ready=ready,
        attempt_reserve=attempt_reserve,
        record_faults=record_faults,
    )
    ol.routes = app.router.routes
    paths = health_paths(ol.config.health_prefix)
    app.add_route(paths["live"], ol.live, methods=["GET"], include_in_schema=False)
    app.add_route(paths["ready"], ol.ready_endpoint, methods=["GET"], include_in_schema=False)
    app.add_route(paths["db"], ol.db, methods=["GET"], include_in_schema=False)

    async def on_fault(request: Request, exc: Exception) -> Response:
        mapped = await ol.handle(exc, request.scope)
        if mapped is None:  # pragma: no cover - only registered for mapped classes
            raise exc
        return _response(mapped)

    app.add_exception_handler(DatabaseUnavailable, on_fault)
    app.add_exception_handler(CommitOutcomeUnknown, on_fault)
    app.add_middleware(OutlastMiddleware, outlast=ol)
    app.state.outlast = ol
    return ol


def require_database(request: Request) -> None:
    """FastAPI dependency: ``Depends(require_database)`` fails fast while the breaker is open.

    Useful with ``db_routes="marked"`` for routers where marking each endpoint
    is awkward; the middleware already does this for database routes.
    """
    ol: Outlast = request.app.state.outlast
    ol.guard.check()


def _endpoint(routes: Sequence[Any], scope: Scope) -> Any:
    for route in routes:
        try:
            match, _child = route.matches(scope)
        except Exception:
            continue
        if match == Match.FULL:
            return getattr(route, "endpoint", None)
    return NO_ROUTE


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get("path", "?")
    return f"{scope.get('method', '?')} {path}"


def _response(answer: Mapped | HealthAnswer) -> Response:
    return Response(
        answer.body,
        status_code=answer.status,
        headers=dict(answer.headers),
        media_type=answer.content_type,
    )
