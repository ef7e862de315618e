"""Flask: 503 with ``Retry-After`` while the database is down, and honest health endpoints.

::

    from flask import Flask
    import outlast
    from outlast.flask import Outlast, no_db

    guard = outlast.Guard("main")
    app = Flask(__name__)
    Outlast(app, guard=guard, budget=5.0, session=Session, engine=engine)

    @app.get("/api/ping")
    @no_db                      # never gets a 503 from the breaker
    def ping(): return {"ok": True}

What it installs on the app:

- a ``before_request`` hook that starts the request budget and, for database
  routes, calls ``guard.check()`` (an open breaker answers 503 at once without
  touching the database);
- an error handler that turns `DatabaseUnavailable`, `CommitOutcomeUnknown`
  and every classified database fault except PERMANENT ones into a 503
  ``application/problem+json`` with ``Retry-After``; PERMANENT faults become
  a generic 500 (no SQL, parameters, host or traceback). The session (`session=`
  and Flask-SQLAlchemy's ``db.session``) is rolled back, the fault is logged
  once on the ``outlast`` logger and reported to the Guard;
- ``/health/live``, ``/health/ready`` and ``/health/db`` (``application/health+json``).

Database routes: every view except the health endpoints, `exempt` path
prefixes and views marked `no_db` (``db_routes="all"``, the default), or only
views marked `db_route` (``db_routes="marked"``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ._health import (
    HEALTH_CONTENT_TYPE,
    SyncProbe,
    engine_ping,
    health_db,
    health_live,
    health_paths,
    health_ready,
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
    WebConfig,
    budget_remaining,
    call_within_budget,
    db_route,
    log_fault,
    map_exception,
    no_db,
    record_fault,
    record_success,
    rollback,
)

if TYPE_CHECKING:
    from ._guard import Guard

__all__ = [
    "Outlast",
    "RequestBudgetExceeded",
    "budget_remaining",
    "db_route",
    "no_db",
]

_EXT = "outlast"


class Outlast:
    """The Flask extension (``Outlast(app, ...)`` or ``Outlast(...).init_app(app)``)."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        guard: Guard | None = None,
        budget: float = DEFAULT_BUDGET,
        health_prefix: str = "/health",
        ready_fail_on_db: bool = False,
        supervisor: Any = None,
        session: Any = None,
        engine: Any = None,
        ping: Callable[[], object] | None = None,
        db_routes: DbRoutes = "all",
        exempt: Sequence[str] = (),
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        ready: Callable[[], bool] | None = None,
        attempt_reserve: float = 0.0,
        record_faults: bool = True,
    ) -> None:
        self.config = WebConfig(
            budget=budget,
            db_routes=db_routes,
            exempt=tuple(exempt),
            health_prefix=health_prefix,
            ready_fail_on_db=ready_fail_on_db,
            health_timeout=health_timeout,
            attempt_reserve=attempt_reserve,
            record_faults=record_faults,
        )
        self._budget = RequestBudget(budget)
        self._guard = guard
        self.supervisor = supervisor
        self.session = session
        self.engine = engine
        self.ping = ping
        self.ready = ready
        self._probe: SyncProbe | None = None
        self._app: Flask | None = None
        if app is not None:
            self.init_app(app)

    # -- set-up ---------------------------------------------------------------

    @property
    def guard(self) -> Guard:
        if self._guard is None:
            from ._guard import Guard

            self._guard = Guard(self._app.name if self._app is not None else "default")
        return self._guard

    def init_app(self, app: Flask) -> None:
        """Install the hooks, the error handler and the health routes on `app`."""
        self._app = app
        app.extensions[_EXT] = self
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        app.register_error_handler(Exception, self._handle_exception)
        paths = health_paths(self.config.health_prefix)
        app.add_url_rule(paths["live"], "outlast_health_live", self._live, methods=["GET"])
        app.add_url_rule(paths["ready"], "outlast_health_ready", self._ready, methods=["GET"])
        app.add_url_rule(paths["db"], "outlast_health_db", self._db, methods=["GET"])

    # -- what views use ---------------------------------------------------------

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``guard.call(fn, ...)`` with the rest of the request budget as deadline."""
        return call_within_budget(
            self.guard, fn, *args, reserve=self.config.attempt_reserve, **kwargs
        )

    # -- hooks ------------------------------------------------------------------

    def _before_request(self) -> None:
        view = app_view(request.endpoint)
        if not self.config.is_db_route(request.path, view):
            return
        g._outlast_budget = self._budget.start()
        self.guard.check()
        g._outlast_clean = True

    def _after_request(self, response: Response) -> Response:
        if g.pop("_outlast_clean", False) and response.status_code < 500:
            record_success(self._guard, _route())
        return response

    def _teardown_request(self, exc: BaseException | None) -> None:
        token = g.pop("_outlast_budget", None)
        if token is not None:
            RequestBudget.finish(token)

    def _sessions(self) -> list[Any]:
        sessions = [self.session]
        ext = self._app.extensions.get("sqlalchemy") if self._app is not None else None
        if ext is not None:
            sessions.append(getattr(ext, "session", None))
        return sessions

    def _handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return exc
        mapped = map_exception(exc, self._guard)
        if mapped is None:
            raise exc
        g.pop("_outlast_clean", None)
        route = _route()
        rollback(self._sessions())
        if self.config.record_faults:
            record_fault(self._guard, exc, route)
        log_fault(exc, mapped, route)
        return _problem_response(mapped)

    # -- health -----------------------------------------------------------------

    def _live(self) -> Response:
        status, doc = health_live()
        return _health_response(status, doc)

    def _ready(self) -> Response:
        status, doc = health_ready(
            self.guard,
            fail_on_db=self.config.ready_fail_on_db,
            supervisor=self.supervisor,
            ready=self.ready,
        )
        return _health_response(status, doc)

    def _db(self) -> Response:
        status, doc, retry_after = health_db(self.guard, self._get_probe())
        return _health_response(status, doc, retry_after)

    def _get_probe(self) -> SyncProbe | None:
        if self._probe is None:
            ping = self.ping
            if ping is None:
                engine = self.engine
                if engine is None and self._app is not None:
                    ext = self._app.extensions.get("sqlalchemy")
                    engine = getattr(ext, "engine", None) if ext is not None else None
                if engine is not None:
                    ping = engine_ping(engine)
            if ping is None:
                return None
            self._probe = SyncProbe(self.guard, ping, self.config.health_timeout)
        return self._probe


def app_view(endpoint: str | None) -> Any:
    from flask import current_app

    if endpoint is None or endpoint == "static" or endpoint.endswith(".static"):
        return NO_ROUTE  # a 404 or a static file: never a database route
    return current_app.view_functions.get(endpoint, NO_ROUTE)


def _route() -> str:
    rule = request.url_rule
    return f"{request.method} {rule.rule if rule is not None else request.path}"


def _problem_response(mapped: Mapped) -> Response:
    return Response(
        mapped.body,
        status=mapped.status,
        headers=list(mapped.headers),
        content_type=PROBLEM_CONTENT_TYPE,
    )


def _health_response(status: int, doc: dict[str, Any], retry_after: str | None = None) -> Response:
    headers = [("Cache-Control", "no-store")]
    if retry_after is not None:
        headers.append(("Retry-After", retry_after))
    return Response(
        json.dumps(doc), status=status, headers=headers, content_type=HEALTH_CONTENT_TYPE
    )
