"""The Django middleware and its settings (``settings.OUTLAST``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

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
from outlast._core.timing.budget import RequestBudget, budget_remaining
from outlast._core.web.base import WebBase
from outlast._core.web.health import HealthAnswer
from outlast._core.web.mapping import Mapped, record_success
from outlast._core.web.options import OPTION_NAMES

__all__ = ["OutlastMiddleware", "Runtime", "runtime"]

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
        web: dict[str, Any] = {
            key.lower(): _load(value) if key in _OBJECTS else value
            for key, value in options.items()
            if key != "DATABASE"
        }
        super().__init__(**web)
        if self._guard is None:
            from outlast._core.guard.guard import Guard

            self.guard = Guard(alias)
        self.alias: str = alias
        if self.ping is None:
            self.ping = self._ping

    def _ping(self) -> None:
        from django.db import connections

        # A connection of its own: the probe runs in a helper thread, and
        # Django connections are per thread; close it so none is left behind.
        conn = connections.create_connection(self.alias)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            conn.close()


#: Seconds kept back so the 503 goes out before the budget ends.
_MARGIN = 0.2
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
            tokens.append(socket_deadline.arm(fileno, max(seconds - _MARGIN, 0.05)))
    return tokens


def _within_budget(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Bound each query of a database view by the rest of the request budget.

    The server's ``statement_timeout`` cannot help when the link itself is dead
    (a frozen proxy or NAT that still acknowledges packets): a socket deadline
    shuts the connection's socket down when the budget runs out, so the query
    fails with "connection lost" (a 503) instead of hanging the worker.
    """
    remaining = budget_remaining()
    if remaining is None:
        return execute(sql, params, many, context)
    if remaining <= _MARGIN:
        raise RequestBudgetExceeded("request budget exhausted before a query")
    wrapper = context.get("connection")
    fileno = connection_fileno(getattr(wrapper, "connection", None))
    if fileno is None:
        return execute(sql, params, many, context)
    token = socket_deadline.arm(fileno, remaining - _MARGIN)
    try:
        return execute(sql, params, many, context)
    finally:
        socket_deadline.disarm(token)


def _route(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None) if match is not None else None
    return f"{request.method} /{route}" if route else f"{request.method} {request.path}"


def response(answer: Mapped | HealthAnswer) -> HttpResponse:
    """An `HttpResponse` carrying a problem document or a health document."""
    result = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers:
        result[name] = value
    return result


def _release(
    request: HttpRequest, response: HttpResponse | None, escaped: BaseException | None
) -> None:
    """End the request's admission: the probe's verdict, and its slot freed."""
    admission = request.__dict__.pop("_outlast_admission", None)
    if admission is None:
        return
    error = getattr(request, "_outlast_error", None) or escaped
    healthy = (
        response is not None
        and getattr(request, "_outlast_clean", False)
        and response.status_code < 500
    )
    admission.release(error, verdict=error is not None or healthy)


class OutlastMiddleware:
    """Breaker admission and budget before database views; 503s for database faults."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.rt = runtime()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Serve one request with every query bounded by the rest of the budget."""
        response: HttpResponse | None = None
        escaped: BaseException | None = None
        try:
            with contextlib.ExitStack() as stack:
                for alias in connections:
                    stack.enter_context(connections[alias].execute_wrapper(_within_budget))
                response = self.get_response(request)
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            # process_view admitted the request; whatever happened since (a
            # fault, a bug in the view, another middleware raising), the probe
            # slot is freed here, in the thread and context that took it.
            _release(request, response, escaped)
            token = getattr(request, "_outlast_budget", None)
            if token is not None:
                RequestBudget.finish(token)
            for armed in getattr(request, "_outlast_deadlines", ()):
                socket_deadline.disarm(armed)
        if getattr(request, "_outlast_clean", False) and response.status_code < 500:
            record_success(self.rt.guard, _route(request))
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
        if not rt.config.is_db_route(request.path_info, view_func):
            return None
        request._outlast_budget = rt.budget.start()
        request._outlast_deadlines = _arm_open_connections(rt.config.budget)
        try:
            # While the breaker is half-open, only one request at a time is let
            # through (the probe); `__call__` releases it after the response.
            request._outlast_admission = rt.guard.admit(op=_route(request))
        except DatabaseUnavailable as exc:
            return self.process_exception(request, exc)
        request._outlast_clean = True
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
