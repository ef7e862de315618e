"""Flask: 503 with ``Retry-After`` while the database is down, and honest health endpoints.

::

    from flask import Flask
    import outlast
    from outlast.flask import Outlast, no_db

    guard = outlast.Guard("main")
    app = Flask(__name__)
    web = Outlast(app, guard=guard, budget=5.0, session=Session, engine=engine)

    @app.post("/api/leads")
    def add():                  # insert(conn, lead): one transaction, never replayed
        web.transaction(engine, insert, request.get_json())   # timeout = rest of budget
        return {}, 201

    @app.get("/api/ping")
    @no_db                      # never gets a 503 from the breaker
    def ping(): return {"ok": True}

What it installs on the app:

- a ``before_request`` hook that, for requests that may use the database,
  starts the request budget and prepares their admission: a request is
  admitted by the Guard's breaker *when it first reaches for the database*
  (a hardened pool's checkout or connect, ``web.call``,
  ``Guard.transaction``). While the breaker is open that is a fast 503; while
  it is half-open exactly one request at a time goes through as the probe
  (the others get a fast 503). A request that never reaches for the database
  (``/ping``, a 401 from an auth hook, a 404, a static file) is never refused
  and never acts as the probe. Views marked `db_route` are admitted before
  they run. The probe's end (``teardown_request``, whatever happened) gives
  the breaker its verdict and frees the slot;
- Flask-SQLAlchemy's engines (and the engine of `session`/`engine`) are
  hardened with the Guard (`outlast.sqlalchemy.install`) unless they already
  are: an ordinary ``db.session.commit()`` whose reply is lost is then
  resolved with ``pg_xact_status()`` (committed: it returns; aborted: a 503
  "not applied"; unknown: a 503 ``OUTCOME_UNKNOWN``), statements are bounded
  by the budget, and ``db.session.remove()`` after a dead link is quiet;
- an error handler that turns `DatabaseUnavailable`, `CommitOutcomeUnknown`
  and every classified database fault except PERMANENT ones into a 503
  ``application/problem+json`` with ``Retry-After``; PERMANENT faults become
  a generic 500 (no SQL, parameters, host or traceback). The session (`session=`
  and Flask-SQLAlchemy's ``db.session``) is rolled back, the fault is logged
  once on the ``outlast`` logger and reported to the Guard. A failure while a
  COMMIT of ``web.transaction`` is in flight or unresolved is the 503 whose
  ``error`` is ``OUTCOME_UNKNOWN`` (the write may have been applied);
- ``/health/live``, ``/health/ready`` and ``/health/db`` (``application/health+json``).

Which requests may use the database: every view except the health
endpoints, `exempt` path prefixes, views marked `no_db` and static files
(``db_routes="all"``, the default), or only views marked `db_route`
(``db_routes="marked"``). Marks work on blueprint views.
"""

from __future__ import annotations

from typing import Any, Unpack

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from outlast._core.faults.errors import RequestBudgetExceeded
from outlast._core.guard.first_use import FirstUse
from outlast._core.timing.budget import RequestBudget, budget_remaining
from outlast._core.web.base import WebBase
from outlast._core.web.health import HealthAnswer, health_paths
from outlast._core.web.mapping import Mapped, record_success, rollback
from outlast._core.web.options import (
    BEFORE_VIEW,
    NO_ROUTE,
    NOT_ADMITTED,
    WebOptions,
    db_route,
    no_db,
)

__all__ = [
    "Outlast",
    "RequestBudgetExceeded",
    "budget_remaining",
    "db_route",
    "no_db",
]

_EXT = "outlast"


class Outlast(WebBase):
    """The Flask extension (``Outlast(app, ...)`` or ``Outlast(...).init_app(app)``).

    Takes the options every web integration shares (`WebOptions`: `guard`,
    `budget`, `session`, `engine`/`ping`, `db_routes`/`exempt`, `ready`,
    `supervisor`, `ready_fail_on_db`, `health_prefix`, `health_timeout`,
    `attempt_reserve`, `record_faults`). Here the Guard defaults to one named
    after the app, and ``/health/db`` to Flask-SQLAlchemy's engine, if any.
    """

    def __init__(self, app: Flask | None = None, **options: Unpack[WebOptions]) -> None:
        super().__init__(**options)
        self._app: Flask | None = None
        self._hardened = False
        if app is not None:
            self.init_app(app)

    # -- set-up ---------------------------------------------------------------

    def _default_guard_name(self) -> str:
        return self._app.name if self._app is not None else "default"

    def _default_engine(self) -> Any:
        ext = self._app.extensions.get("sqlalchemy") if self._app is not None else None
        return getattr(ext, "engine", None) if ext is not None else None

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
        if "sqlalchemy" in app.extensions or self.engine is not None or self.session is not None:
            with app.app_context():
                self._harden(final=False)  # and again on the first request

    # -- hooks ------------------------------------------------------------------

    def _before_request(self) -> None:
        view = app_view(request.endpoint)
        admission = self.config.admission_for(request.path, view)
        if admission == NOT_ADMITTED:
            return
        if not self._hardened:
            self._harden(final=True)
        g._outlast_budget = self.budget.start()
        first_use = FirstUse(self.guard, _route()).enter()
        g._outlast_first_use = first_use
        g._outlast_clean = True
        if admission == BEFORE_VIEW:
            # Raises DatabaseUnavailable (-> the 503 handler) when the breaker refuses.
            first_use.take()

    def _after_request(self, response: Response) -> Response:
        if g.pop("_outlast_clean", False) and response.status_code < 500:
            g._outlast_healthy = True
            first_use = g.get("_outlast_first_use")
            if first_use is not None and first_use.reached:
                record_success(self._guard, _route())
        return response

    def _teardown_request(self, exc: BaseException | None) -> None:
        # Runs for every request that ran before_request, also when the view or
        # an after_request hook raised: the probe slot is always freed here.
        first_use = g.pop("_outlast_first_use", None)
        if first_use is not None:
            error = g.pop("_outlast_error", None) or exc
            # A 5xx the view built by itself says nothing either way.
            healthy = g.pop("_outlast_healthy", False)
            first_use.release(error, verdict=error is not None or healthy)
        token = g.pop("_outlast_budget", None)
        if token is not None:
            RequestBudget.finish(token)

    def _harden(self, *, final: bool) -> None:
        """Harden the engines behind the app's sessions with the Guard (once each).

        Runs when the extension is installed and on the first request that
        may use the database (`final`): Flask-SQLAlchemy may be set up after
        this extension, and its engines exist only inside an app context.
        """
        sources = [self.engine, self.session]
        ext = self._app.extensions.get("sqlalchemy") if self._app is not None else None
        if ext is not None:
            try:
                sources.extend(ext.engines.values())
            except Exception:  # not inside an app context (yet)
                return
        sources = [s for s in sources if s is not None]
        if sources:
            from outlast.sqlalchemy._sessions import harden

            for source in sources:
                harden(source, self.guard)
        self._hardened = final

    def _sessions(self) -> list[Any]:
        sessions = [self.session]
        ext = self._app.extensions.get("sqlalchemy") if self._app is not None else None
        if ext is not None:
            sessions.append(getattr(ext, "session", None))
        return sessions

    def _handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return exc
        mapped = self.map_fault(exc)
        if mapped is None:
            raise exc
        g.pop("_outlast_clean", None)
        g._outlast_error = exc  # for the probe's verdict at teardown
        route = _route()
        rollback(self._sessions())
        self.report_fault(exc, mapped, route)
        return _response(mapped)

    # -- health -----------------------------------------------------------------

    def _live(self) -> Response:
        return _response(self.live_answer())

    def _ready(self) -> Response:
        return _response(self.ready_answer())

    def _db(self) -> Response:
        return _response(self.db_answer())


def app_view(endpoint: str | None) -> Any:
    """The view function Flask will run for `endpoint` (`NO_ROUTE` for 404s and static files).

    Blueprint views are found by their dotted endpoint (``"leads.create"``).
    """
    from flask import current_app

    if endpoint is None or endpoint == "static" or endpoint.endswith(".static"):
        return NO_ROUTE  # a 404 or a static file: never a database route
    return current_app.view_functions.get(endpoint, NO_ROUTE)


def _route() -> str:
    rule = request.url_rule
    return f"{request.method} {rule.rule if rule is not None else request.path}"


def _response(answer: Mapped | HealthAnswer) -> Response:
    return Response(
        answer.body,
        status=answer.status,
        headers=list(answer.headers),
        content_type=answer.content_type,
    )
