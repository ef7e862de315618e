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
        return await web.acall(fetch_leads, idempotent=True)   # timeout = rest of budget

    @app.post("/api/leads")
    async def add(lead: Lead):      # insert(conn, lead): one transaction, never replayed
        return await web.atransaction(async_engine, insert, lead)

    @app.get("/api/ping")
    @no_db
    async def ping(): return {"ok": True}

`install()` adds exception handlers for `DatabaseUnavailable` and
`CommitOutcomeUnknown`, a pure-ASGI middleware, and the health routes
(``/health/live``, ``/health/ready``, ``/health/db``). The middleware runs
inside every middleware of the app's own (``CORSMiddleware`` included,
whether it was added before or after `install`), so its 503s carry their
headers.

For each request that may use the database it starts the request budget
and admits the request with the Guard's breaker *when the request first
reaches for the database* (a hardened pool's checkout or connect,
``web.call``, ``Guard.transaction``): while the breaker is open that is a
fast 503, while it is half-open one request at a time goes through as the
probe and the others get a fast 503. A request that never reaches for the
database (``/ping``, a 401 from an auth dependency, a 404) is never refused
and never acts as the probe. Routes marked `db_route` are admitted before
they run instead. The budget bounds the route until the response starts
(the work stops ``answer_margin`` before the budget, so the 503 leaves
within it), and every classified database fault becomes a 503
``application/problem+json`` (PERMANENT faults a generic 500) after rolling
back `session`, logging the fault once and reporting it to the Guard.

Which requests may use the database: every route except the health
endpoints, `exempt` path prefixes, endpoints marked `no_db`, static files and
404s (``db_routes="all"``, the default), or only endpoints marked `db_route`
(``db_routes="marked"``). Marks and names work for routes of ``APIRouter``s
included with a prefix and of mounted sub-applications, in every FastAPI and
Starlette version the extra allows.

`session` (below) is a FastAPI dependency that gives each request its own
SQLAlchemy session: an ordinary ``session.commit()`` whose reply is lost is
resolved with ``pg_xact_status()`` (see `outlast.sqlalchemy`), and closing it
after the link died is quiet.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outlast._core.faults.errors import (
    CommitOutcomeUnknown,
    ConfigurationError,
    DatabaseUnavailable,
    RequestBudgetExceeded,
)
from outlast._core.guard.first_use import CURRENT as FIRST_USE
from outlast._core.guard.first_use import FirstUse
from outlast._core.timing.budget import RequestBudget, budget_remaining
from outlast._core.web.base import WebBase
from outlast._core.web.calls import (
    acall_within_budget,
    atransaction_within_budget,
    budget_exceeded,
)
from outlast._core.web.health import (
    HealthAnswer,
    async_engine_ping,
    health_answer,
    health_db,
    health_db_async,
    health_paths,
)
from outlast._core.web.mapping import PROBLEM_CONTENT_TYPE, Mapped, record_success
from outlast._core.web.options import BEFORE_VIEW, NOT_ADMITTED, WebOptions, db_route, no_db

from ._routes import resolve
from ._session import session

if TYPE_CHECKING:
    from starlette.middleware import _MiddlewareFactory

__all__ = [
    "Outlast",
    "OutlastMiddleware",
    "RequestBudgetExceeded",
    "budget_remaining",
    "db_route",
    "install",
    "no_db",
    "require_database",
    "session",
]

_ROLLBACK_TIMEOUT = 1.0
#: How long a cancelled app may take to stop before the 503 goes out without it.
_CANCEL_GRACE = 0.05
#: How often a request past its budget that never touched the database is looked at.
_UNREACHED_POLL = 0.05
T = TypeVar("T")


class Outlast(WebBase):
    """What `install()` returns (also at ``app.state.outlast``).

    Takes the options of `install` (`WebOptions`); `name` names the Guard made
    when none is given.
    """

    def __init__(self, *, name: str = "default", **options: Unpack[WebOptions]) -> None:
        super().__init__(**options)
        if self._guard is None:
            from outlast._core.guard.guard import Guard

            self.guard = Guard.for_web(name)
        self.routes: Sequence[Any] = ()

    # -- what endpoints use -------------------------------------------------------

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """``guard.acall`` with the rest of the request budget (minus `attempt_reserve`)."""
        return await acall_within_budget(
            self.guard, fn, *args, reserve=self.config.attempt_reserve, **kwargs
        )

    async def atransaction(
        self, source: Any, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        """``guard.atransaction(source, fn, ...)`` with the rest of the request budget.

        The timeout is that of `acall`. While the COMMIT is in flight or
        being resolved the request is marked: if the budget runs out then, the
        503 says ``OUTCOME_UNKNOWN`` (the write may have been applied).
        """
        return await atransaction_within_budget(
            self.guard, source, fn, *args, reserve=self.config.attempt_reserve, **kwargs
        )

    # -- fault handling ---------------------------------------------------------

    async def handle(
        self, exc: BaseException, scope: Scope, *, rollback: bool = True
    ) -> Mapped | None:
        """Map, roll back, record and log one exception (None: not a database fault).

        ``rollback=False``: the app is still running (its budget ran out and it
        has not given up yet), so its session must not be touched from here.
        """
        mapped = self.map_fault(exc)
        if mapped is None:
            return None
        route = _route(scope)
        scope["outlast.fault"] = True
        scope["outlast.error"] = exc
        if rollback:
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

    def resolve(self, scope: Scope) -> tuple[str, str]:
        """``(admission, route label)`` for the request in `scope` (see `WebConfig.admission_for`).

        The label names the route in logs and events: ``"GET /api/leads/{lead_id}"``,
        router prefixes and mounts included.
        """
        view, path = resolve(self.routes, scope)
        admission = self.config.admission_for(scope["path"], view)
        return admission, f"{scope.get('method', '?')} {path}"

    def is_db_route(self, scope: Scope) -> bool:
        """True when the request in `scope` may use the database (see `WebConfig`)."""
        return self.resolve(scope)[0] != NOT_ADMITTED


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
        admission, route = ol.resolve(scope)
        scope["outlast.route"] = route
        if admission == NOT_ADMITTED:
            exchange = _Exchange(send)
            try:
                await self.app(scope, receive, exchange.send)
            except Exception as exc:
                if exchange.started or not await self._answer(exc, scope, send):
                    raise
            return

        exchange = _Exchange(send)
        token = ol.budget.start()
        # Before the app task exists, so that it (and the threads its sync
        # endpoints and dependencies run in) shares this request's admission.
        first_use = FirstUse(ol.guard, route).enter()
        escaped: BaseException | None = None
        try:
            if admission == BEFORE_VIEW:
                first_use.take()  # raises DatabaseUnavailable when the breaker refuses
            await self._within_budget(scope, receive, exchange, first_use)
            if first_use.reached and exchange.status < 500 and not scope.get("outlast.fault"):
                record_success(ol.guard, route)
        except Exception as exc:
            escaped = exc
            if exchange.started:
                raise
            if not await self._answer(exc, scope, send, rollback=not exchange.abandoned):
                raise
        except BaseException as exc:  # cancelled: the client went away, the server stops
            escaped = exc
            raise
        finally:
            _release(first_use, scope, exchange, escaped)
            RequestBudget.finish(token)

    async def _within_budget(
        self, scope: Scope, receive: Receive, exchange: _Exchange, first_use: FirstUse
    ) -> None:
        """Run the app until it answers; the budget covers the work, not the streaming.

        The app runs in a task of its own (its context, and so the request's
        budget state, is shared), so that when the budget runs out the 503 can
        go out at once: a cancelled driver may take its time to give up (psycopg
        first asks the server to cancel the query and waits for it, 5 s plus
        5 s), and the client must not wait for that. Only a request that
        reached for the database is cut short: the rest of a route's time is
        its own business (a slow call to another service is not an outage).
        """
        budget = budget_remaining()
        task = asyncio.ensure_future(self.app(scope, receive, exchange.send))
        exchange.begun = asyncio.get_running_loop().create_future()
        try:
            done, _ = await asyncio.wait(
                (task, exchange.begun), timeout=budget, return_when=asyncio.FIRST_COMPLETED
            )
            if not done and not first_use.reached:
                # It has not touched the database: let it finish, but cut it
                # short if it reaches for the database later (its budget is spent).
                while not done and not first_use.reached:
                    done, _ = await asyncio.wait(
                        (task, exchange.begun), timeout=_UNREACHED_POLL,
                        return_when=asyncio.FIRST_COMPLETED,
                    )  # fmt: skip
            if not done:  # the budget ran out before the response started
                task.cancel()
                await asyncio.wait((task,), timeout=_CANCEL_GRACE)
                if not exchange.started:
                    exchange.abandoned = True  # whatever the app sends later is dropped
                    task.add_done_callback(_consume)
                    raise budget_exceeded(self.outlast.guard)
            await task
        except asyncio.CancelledError:
            task.cancel()  # the server gave up on the request: so does the app
            raise

    async def _answer(
        self, exc: BaseException, scope: Scope, send: Send, *, rollback: bool = True
    ) -> bool:
        mapped = await self.outlast.handle(exc, scope, rollback=rollback)
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


class _Exchange:
    """What the middleware knows about one request's response."""

    __slots__ = ("abandoned", "begun", "downstream", "started", "status")

    def __init__(self, downstream: Send) -> None:
        self.downstream = downstream
        self.started = False
        self.status = 0
        self.abandoned = False  # the 503 went out instead: the app's answer is dropped
        self.begun: asyncio.Future[None] | None = None  # set when the response starts

    async def send(self, message: Message) -> None:
        if self.abandoned:
            return
        if message["type"] == "http.response.start":
            self.started = True
            self.status = int(message["status"])
            if self.begun is not None and not self.begun.done():
                self.begun.set_result(None)
        await self.downstream(message)


def _release(
    first_use: FirstUse, scope: Scope, exchange: _Exchange, escaped: BaseException | None
) -> None:
    """End the request's admission: the probe's verdict (if it was one), its slot freed."""
    # A fault the app's exception handlers answered never reached the middleware.
    error = escaped if escaped is not None else scope.get("outlast.error")
    healthy = exchange.started and exchange.status < 500 and not scope.get("outlast.fault")
    first_use.release(error, verdict=error is not None or healthy)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned app task's outcome (no "exception never retrieved")."""
    if task.done() and not task.cancelled():
        task.exception()


def install(app: Starlette, **options: Unpack[WebOptions]) -> Outlast:
    """Install outlast on a Starlette or FastAPI app (before it starts serving).

    Takes the options every web integration shares (`WebOptions`: `guard`,
    `budget`, `engine`/`ping`, `session`, `db_routes`/`exempt`, `admission`,
    `answer_margin`, `ready`, `supervisor`, `ready_fail_on_db`,
    `health_prefix`, `health_timeout`, `attempt_reserve`, `record_faults`).
    Without a `guard`, one made by ``outlast.Guard.for_web()``.

    The middleware goes inside every middleware of the app's own, whenever
    they are added: ``CORSMiddleware`` (and any other) then sees the 503s
    too. Routes may be added before or after this call.
    """
    if getattr(app, "middleware_stack", None) is not None:
        raise ConfigurationError("install outlast before the app starts serving")
    ol = Outlast(**options)
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
    # Appended, not inserted first (as add_middleware does): the innermost of
    # the app's middleware, so those added before install() (CORS, where the
    # FastAPI docs put it) wrap the 503s as well as those added after.
    factory: _MiddlewareFactory[Any] = OutlastMiddleware
    app.user_middleware.append(Middleware(factory, outlast=ol))
    app.state.outlast = ol
    return ol


async def require_database(request: Request) -> AsyncIterator[None]:
    """FastAPI dependency: ``Depends(require_database)`` admits the request at once.

    Fails fast (503) while the breaker is open, and while it is half-open lets
    one request at a time through as the probe; the probe ends with the
    request. On a route the middleware admits on first use it takes that
    admission now (before the dependencies listed after it, such as an auth
    check); elsewhere (``db_routes="marked"``, a ``no_db`` route) it admits
    the request itself.
    """
    ol: Outlast = request.app.state.outlast
    first_use = FIRST_USE.get()
    if first_use is not None and first_use.serves(ol.guard):
        first_use.take()
        yield
        return
    admission = ol.guard.admit(op=_route(request.scope))
    try:
        yield
    except BaseException as exc:
        admission.release(exc)
        raise
    admission.release()


def _route(scope: Scope) -> str:
    label = scope.get("outlast.route")
    if isinstance(label, str):
        return label
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
