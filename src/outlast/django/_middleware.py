"""The Django middleware and its settings (``settings.OUTLAST``)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from outlast._core.connections.socket_deadline import connection_fileno, socket_deadline
from outlast._core.faults.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    RequestBudgetExceeded,
)
from outlast._core.guard.first_use import FirstUse, reaching
from outlast._core.timing.budget import RequestBudget, budget_remaining
from outlast._core.web.base import WebBase
from outlast._core.web.health import HealthAnswer
from outlast._core.web.mapping import Mapped, record_success
from outlast._core.web.options import _MARK, BEFORE_VIEW, OPTION_NAMES
from outlast.django._commit import MARGIN, guard_commits, note_statement_failure
from outlast.django._connect import guard_connects
from outlast.django._routes import (
    ExemptRules,
    current_flags,
    end_request,
    mark_of,
    release_atomic,
    route_label,
    start_request,
    unknown_names,
    walk_urlconf,
)
from outlast.django._transaction import alias_of, require_postgresql

__all__ = ["OutlastMiddleware", "Runtime", "runtime"]

logger = logging.getLogger("outlast")

T = TypeVar("T")

# settings.OUTLAST: the web options in capitals, plus the database alias.
_KEYS = frozenset({name.upper() for name in OPTION_NAMES} | {"DATABASE"})
# Options that name an object may give its dotted path instead.
_OBJECTS = frozenset({"GUARD", "SUPERVISOR", "SESSION", "ENGINE", "PING", "READY"})


def _load(value: Any) -> Any:
    return import_string(value) if isinstance(value, str) else value


class Runtime(WebBase):
    """What the middleware and the health views share, built from ``settings.OUTLAST``."""

    def __init__(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - _KEYS)
        if unknown:
            raise ConfigurationError(f"unknown OUTLAST setting(s): {', '.join(unknown)}")
        alias = options.get("DATABASE", "default")
        if not isinstance(alias, str):
            raise ConfigurationError(f"OUTLAST DATABASE must be a database alias, not {alias!r}")
        # EXEMPT takes exact paths, path patterns, route patterns and URL names
        # here (`ExemptRules`): the middleware matches it, not the core's
        # prefix rule (``config.exempt`` only keeps the entries as given).
        self.exempt = ExemptRules(options.get("EXEMPT", ()))
        web: dict[str, Any] = {
            key.lower(): _load(value) if key in _OBJECTS else value
            for key, value in options.items()
            if key != "DATABASE"
        }
        self.alias: str = alias
        super().__init__(**web)
        if self.ping is None:
            self.ping = self._ping
        self._checked_urlconfs: set[str] = set()

    def _default_guard_name(self) -> str:
        # Made on first use when OUTLAST names no GUARD: `Guard.for_web`, as
        # in Flask and FastAPI, named after the database alias.
        return self.alias

    def _ping(self) -> None:
        # A connection of its own: the probe runs in a helper thread, and
        # Django connections are per thread; close it so none is left behind.
        conn = connections.create_connection(self.alias)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            conn.close()

    def is_db_route(self, request: HttpRequest, view: object) -> bool:
        """Whether the request, served by `view`, is admitted as a database request.

        Marks come first (`no_db` / `db_route` on the view or its class), then
        ``DB_ROUTES``, then the health endpoints and ``EXEMPT``.
        """
        path = request.path_info
        if self.config.is_health_path(path):
            return False
        mark = mark_of(view, _MARK)
        if mark is not None:
            return mark
        if self.config.db_routes == "marked":
            return False
        return not self.exempt.matches(path, getattr(request, "resolver_match", None))

    def check_urlconf(self, request: HttpRequest) -> None:
        """Once per URLconf: warn about EXEMPT names that match no URL pattern."""
        urlconf = getattr(request, "urlconf", None) or getattr(settings, "ROOT_URLCONF", "")
        key = str(urlconf)
        if key in self._checked_urlconfs or not self.exempt.names:
            return
        self._checked_urlconfs.add(key)
        try:
            missing = unknown_names(self.exempt, list(walk_urlconf(urlconf)))
        except Exception:  # an URLconf that cannot be walked: nothing to say
            logger.debug("could not walk the URLconf", exc_info=True)
            return
        for name in missing:
            logger.warning(
                "[CONFIG] OUTLAST EXEMPT entry %r matches no route pattern or URL name",
                name,
                extra={"outlast_exempt": name},
            )

    def transaction(self, source: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(connection, ...)`` as one transaction within the rest of the request budget.

        Outside ``atomic()``: ``guard.transaction`` (the whole function re-run
        after a fault before COMMIT, a lost COMMIT resolved with
        ``pg_xact_status()``). Inside one -- ``ATOMIC_REQUESTS``, Django's
        ``TestCase``, your own ``transaction.atomic()`` -- the enclosing block
        owns the transaction: `fn` runs once, in a savepoint, and the enclosing
        COMMIT is the one guarded (in a request, by the middleware). PostgreSQL
        only: anything else is a `ConfigurationError` at once.
        """
        from django.db import transaction

        alias = alias_of(source)
        conn = connections[alias]
        require_postgresql(conn, "runtime().transaction()")
        if conn.in_atomic_block:
            kwargs.pop("timeout", None)
            kwargs.pop("op", None)
            with transaction.atomic(using=alias):
                return fn(conn, *args, **kwargs)
        return super().transaction(source, fn, *args, **kwargs)

    def within_budget(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        """The query hook: bound each query by the budget; note writes whose fate is unknown.

        The server's ``statement_timeout`` cannot help when the link itself is
        dead (a frozen proxy or NAT that still acknowledges packets): a socket
        deadline shuts the connection's socket down when the budget runs out,
        so the query fails with "connection lost" (a 503) instead of hanging
        the worker.
        """
        wrapper = context.get("connection")
        # A request admitted on first use is admitted here, by its first
        # query (raises DatabaseUnavailable -> 503 when the breaker refuses).
        reaching(self.guard)
        try:
            result = _bounded_query(execute, sql, params, many, context)
        except Exception as exc:
            flags = current_flags()
            if flags is not None and self.guard.classify(exc) is not None:
                flags.faulted = True
            if wrapper is not None:
                note_statement_failure(wrapper, sql, exc, self.guard)
            raise
        flags = current_flags()
        if flags is not None:
            flags.answered = True  # the database answered: evidence that it is up
        return result


_lock = threading.Lock()
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process's `Runtime` (built on first use from ``settings.OUTLAST``)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(dict(getattr(settings, "OUTLAST", {}) or {}))
        return _runtime


def _reset_runtime(**_: Any) -> None:
    global _runtime
    with _lock:
        _runtime = None


def _arm_open_connections(seconds: float) -> list[int]:
    """Bound the persistent connections this thread already holds by the budget.

    Covers what Django runs outside ``execute_wrapper`` (the health check of
    ``CONN_HEALTH_CHECKS``, ``SET`` statements on reuse).
    """
    tokens = []
    for conn in connections.all(initialized_only=True):
        raw = getattr(conn, "connection", None)
        fileno = connection_fileno(raw) if raw is not None else None
        if fileno is not None:
            tokens.append(socket_deadline.arm(fileno, max(seconds - MARGIN, 0.05)))
    return tokens


def _bounded_query(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    remaining = budget_remaining()
    if remaining is None:
        return execute(sql, params, many, context)
    if remaining <= MARGIN:
        raise RequestBudgetExceeded("request budget exhausted before a query")
    wrapper = context.get("connection")
    fileno = connection_fileno(getattr(wrapper, "connection", None))
    if fileno is None:
        return execute(sql, params, many, context)
    token = socket_deadline.arm(fileno, remaining - MARGIN)
    try:
        return execute(sql, params, many, context)
    finally:
        socket_deadline.disarm(token)


def _route(request: HttpRequest) -> str:
    """``METHOD /route/pattern/`` for logs and the Guard (the path when nothing resolved)."""
    match = getattr(request, "resolver_match", None)
    label = route_label(getattr(match, "route", None)) if match is not None else None
    return f"{request.method} /{label}" if label else f"{request.method} {request.path}"


def response(answer: Mapped | HealthAnswer) -> HttpResponse:
    """An `HttpResponse` carrying a problem document or a health document."""
    result = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers:
        result[name] = value
    return result


def _healthy(request: HttpRequest, response: HttpResponse | None, answered: bool) -> bool:
    """A database request that ended well *and* heard from the database.

    Only an answer from the server is evidence that the database is up: a
    401 from an authentication check that never queried, or a view that
    touched nothing, says nothing about it.
    """
    return (
        answered
        and response is not None
        and getattr(request, "_outlast_clean", False)
        and response.status_code < 500
    )


def _release(
    request: HttpRequest,
    response: HttpResponse | None,
    escaped: BaseException | None,
    healthy: bool,
) -> None:
    """End the request's admission: the probe's verdict, and its slot freed."""
    first_use = request.__dict__.pop("_outlast_first_use", None)
    if first_use is None:
        return
    error = getattr(request, "_outlast_error", None) or escaped
    first_use.release(error, verdict=error is not None or healthy)


def _atomic_requests() -> bool:
    return any(connections[alias].settings_dict.get("ATOMIC_REQUESTS") for alias in connections)


class OutlastMiddleware:
    """Breaker admission and budget before database views; 503s for database faults."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.rt = runtime()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Serve one request: queries bounded by the budget, COMMITs guarded."""
        rt = self.rt
        response: HttpResponse | None = None
        escaped: BaseException | None = None
        flags, flags_token = start_request()
        armed: list[int] = []  # socket deadlines of connections opened by this request
        try:
            with contextlib.ExitStack() as stack:
                for alias in connections:
                    conn = connections[alias]
                    stack.enter_context(conn.execute_wrapper(rt.within_budget))
                    stack.enter_context(
                        guard_commits(conn, lambda: rt.guard, lambda: _route(request))
                    )
                    stack.enter_context(
                        guard_connects(conn, lambda: flags.faulted, armed, lambda: rt.guard)
                    )
                response = self.get_response(request)
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            # process_view admitted the request; whatever happened since (a
            # fault, a bug in the view, another middleware raising), the probe
            # slot is freed here, in the thread and context that took it.
            healthy = _healthy(request, response, flags.answered)
            _release(request, response, escaped, healthy)
            token = getattr(request, "_outlast_budget", None)
            if token is not None:
                RequestBudget.finish(token)
            for token in (*getattr(request, "_outlast_deadlines", ()), *armed):
                socket_deadline.disarm(token)
            end_request(flags_token)
        if healthy:
            record_success(rt.guard, _route(request))
        return response

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        """Before a database view: start the budget; an open breaker answers 503 at once."""
        rt = self.rt
        rt.check_urlconf(request)
        if not rt.is_db_route(request, view_func):
            if _atomic_requests():
                # ATOMIC_REQUESTS would connect before the view runs: not for
                # a view that needs no database (this request only).
                release_atomic(view_func)
            return None
        request._outlast_budget = rt.budget.start()
        # The work part of the budget (RequestBudget keeps an answer margin):
        # these fire before the budget-tagged statement deadlines, as before.
        request._outlast_deadlines = _arm_open_connections(rt.budget.work)
        # Admission on first use: the request asks the breaker when it first
        # connects or queries, so a view that answers without the database (a
        # 401 from an authentication check, a cached page) is neither refused
        # during an outage nor taken for the half-open probe. While the breaker
        # is half-open only one request at a time gets through (the probe);
        # `__call__` releases it after the response.
        first_use = FirstUse(rt.guard, _route(request)).enter()
        request._outlast_first_use = first_use
        request._outlast_clean = True
        if mark_of(view_func, _MARK) or rt.config.admission == BEFORE_VIEW:
            try:
                first_use.take()
            except DatabaseUnavailable as exc:
                return self.process_exception(request, exc)
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer a database fault (503, or 500 for PERMANENT); None for anything else."""
        rt = self.rt
        request._outlast_error = exception  # for the probe's verdict (None: not a fault)
        mapped = rt.map_fault(exception)
        if mapped is None:
            return None
        request._outlast_clean = False
        rt.report_fault(exception, mapped, _route(request))
        return response(mapped)


def _connect_reset() -> None:
    from django.core.signals import setting_changed

    def on_change(setting: str, **kwargs: Any) -> None:
        if setting == "OUTLAST":
            _reset_runtime()

    setting_changed.connect(on_change, weak=False, dispatch_uid="outlast-runtime-reset")


_connect_reset()
