"""The framework-neutral half of the web integrations (standard library only).

`outlast.flask`, `outlast.starlette` and `outlast.django` are thin shells around
this module. It decides:

- which exceptions become a ``503`` (`map_exception`): `DatabaseUnavailable`,
  `CommitOutcomeUnknown`, and every fault `classify()` recognises except
  PERMANENT ones, which stay ``500`` with a generic body;
- the bodies: RFC 9457 ``application/problem+json`` that keeps the seeds'
  ``error``/``detail``/``status`` fields, and never any SQL, parameter, host
  name or traceback;
- the ``Retry-After`` value (`retry_after_header`: whole seconds, at least 1);
- the request budget (`RequestBudget`, `budget_remaining`): a deadline per
  request kept in a context variable, so code deep inside a view can pass the
  rest of it to ``guard.call(..., deadline=...)``;
- which routes are database routes (`db_route` / `no_db` markers, exempt path
  prefixes);
- the health documents (IETF draft ``application/health+json``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from ._errors import CommitOutcomeUnknown, DatabaseUnavailable
from ._fault import Fault, FaultKind

if TYPE_CHECKING:
    from ._guard import Guard
    from ._state import DatabaseState

__all__ = [
    "DEFAULT_BUDGET",
    "HEALTH_CONTENT_TYPE",
    "PROBLEM_CONTENT_TYPE",
    "HealthConfig",
    "Mapped",
    "RequestBudget",
    "RequestBudgetExceeded",
    "WebConfig",
    "budget_remaining",
    "db_route",
    "health_db",
    "health_live",
    "health_ready",
    "map_exception",
    "no_db",
    "problem_body",
    "retry_after_header",
]

logger = logging.getLogger("outlast")

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
HEALTH_CONTENT_TYPE: Final = "application/health+json"
DEFAULT_BUDGET: Final = 5.0
#: Retry-After never exceeds this (an hour): a client should come back eventually.
MAX_RETRY_AFTER: Final = 3600
#: How long /health/db waits for ``SELECT 1``.
DEFAULT_HEALTH_TIMEOUT: Final = 2.0

_F = TypeVar("_F", bound=Callable[..., Any])


class RequestBudgetExceeded(DatabaseUnavailable):
    """The request used up its budget while waiting for the database (-> 503)."""


# --------------------------------------------------------------------------- bodies


def retry_after_header(seconds: float | None) -> str:
    """``Retry-After`` as RFC 9110 delay-seconds: a whole number, at least 1.

    Rounds up (a client told "1" after a 1.2 s breaker period would come back
    too early); NaN, infinities and missing values become 1; capped at an hour.
    """
    if seconds is None or not math.isfinite(seconds):
        return "1"
    return str(min(max(math.ceil(seconds), 1), MAX_RETRY_AFTER))


def problem_body(status: int = 503) -> dict[str, Any]:
    """The RFC 9457 problem document for a 503 (or the generic one for a 500)."""
    if status == 503:
        return {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "Database temporarily unavailable",
            "error": "SERVICE_UNAVAILABLE",
        }
    return {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": status,
        "detail": "The server could not complete the request",
        "error": "INTERNAL_ERROR",
    }


def dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()


@dataclass(frozen=True, slots=True)
class Mapped:
    """What an exception turns into: a status, headers and a JSON body."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    fault: Fault | None

    @property
    def content_type(self) -> str:
        return PROBLEM_CONTENT_TYPE


def unavailable(retry_after: float | None, fault: Fault | None = None) -> Mapped:
    """The 503 answer."""
    return Mapped(
        503,
        dumps(problem_body(503)),
        (("Retry-After", retry_after_header(retry_after)), ("Cache-Control", "no-store")),
        fault,
    )


def internal_error(fault: Fault | None = None) -> Mapped:
    """The generic 500 answer for a PERMANENT database fault."""
    return Mapped(500, dumps(problem_body(500)), (("Cache-Control", "no-store"),), fault)


# --------------------------------------------------------------------------- mapping


def _classify(exc: BaseException) -> Fault | None:
    from ._classify import classify

    return classify(exc)


def _guard_retry_after(guard: Guard | None) -> float | None:
    if guard is None:
        return None
    try:
        return float(guard.retry_after)
    except Exception:  # a broken guard must not turn a 503 into a 500
        return None


def map_exception(exc: BaseException, guard: Guard | None = None) -> Mapped | None:
    """Decide how an exception raised while serving a request is answered.

    Returns None for exceptions that are not database faults: the framework
    handles those as usual. Database faults become a 503 with ``Retry-After``
    (every kind but PERMANENT, which becomes a generic 500).
    """
    if isinstance(exc, DatabaseUnavailable):
        ra = exc.retry_after if exc.retry_after else _guard_retry_after(guard)
        return unavailable(ra, exc.fault)
    if isinstance(exc, CommitOutcomeUnknown):
        return unavailable(_guard_retry_after(guard), exc.fault)
    try:
        fault = _classify(exc)
    except Exception:  # classification must never make things worse
        fault = None
    if fault is None:
        return None
    if fault.kind is FaultKind.PERMANENT:
        return internal_error(fault)
    return unavailable(_guard_retry_after(guard), fault)


def _redact(text: str) -> str:
    from ._redact import redact

    return redact(text)


LOG_EVERY: Final = 10.0
_log_lock = threading.Lock()
_last_logged: dict[tuple[str, str], float] = {}


def _first_in_a_while(key: tuple[str, str]) -> bool:
    now = time.monotonic()
    with _log_lock:
        last = _last_logged.get(key)
        if last is not None and now - last < LOG_EVERY:
            return False
        if len(_last_logged) > 1024:
            _last_logged.clear()
        _last_logged[key] = now
        return True


def log_fault(exc: BaseException, mapped: Mapped, route: str) -> None:
    """Log a mapped fault once per exception (no traceback, no SQL, redacted)."""
    if getattr(exc, "_outlast_logged", False):
        return
    try:
        exc._outlast_logged = True  # type: ignore[attr-defined]
    except Exception:
        pass
    fault = mapped.fault
    reason = fault.reason if fault is not None else type(exc).__name__
    kind = fault.kind.name if fault is not None else "UNAVAILABLE"
    if isinstance(exc, RequestBudgetExceeded):
        reason, kind = "request_budget_exceeded", "TIMEOUT"
    message = _redact(fault.message if fault is not None else str(exc))
    if mapped.status == 503:
        retry_after = dict(mapped.headers).get("Retry-After", "1")
        # During an outage every request is a 503: one WARNING per route and
        # reason every LOG_EVERY seconds, the rest at DEBUG.
        level = logging.WARNING if _first_in_a_while((route, reason)) else logging.DEBUG
        logger.log(
            level,
            "[DB_UNAVAILABLE] route=%s status=503 kind=%s reason=%s retry_after=%s msg=%s",
            _redact(route),
            kind,
            reason,
            retry_after,
            message,
            extra={"outlast_route": route, "outlast_reason": reason},
        )
    else:
        sqlstate = fault.sqlstate if fault is not None else None
        logger.error(
            "[DB_ERROR] route=%s status=%d kind=%s reason=%s sqlstate=%s msg=%s",
            _redact(route),
            mapped.status,
            kind,
            reason,
            sqlstate,
            message,
            extra={"outlast_route": route, "outlast_reason": reason},
        )


def record_fault(guard: Guard | None, exc: BaseException, route: str) -> None:
    """Tell the Guard about a fault raised outside ``guard.call`` (once per exception).

    The Guard's own calls and the hardened engines record their faults
    themselves; they mark the exception, and so do we, so nothing counts twice.
    """
    if guard is None or isinstance(exc, DatabaseUnavailable):
        return
    if _already_recorded(exc) or _through_guard(exc):
        return
    try:
        guard.record_failure(exc, op=route)
    except Exception:  # pragma: no cover - defensive: never turn a 503 into a 500
        logger.debug("record_failure failed", exc_info=True)
    try:
        exc._outlast_recorded = True  # type: ignore[attr-defined]
    except Exception:
        pass


def _already_recorded(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if getattr(seen, "_outlast_recorded", False):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _through_guard(exc: BaseException) -> bool:
    """True when `exc` came out of a Guard call (which already counted it)."""
    from ._guard import Guard

    codes = {
        Guard.call.__code__,
        Guard.acall.__code__,
        Guard._run.__code__,
        Guard._arun.__code__,
    }
    tb = exc.__traceback__
    for _ in range(512):
        if tb is None:
            return False
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def record_success(guard: Guard | None, route: str) -> None:
    """After a database route finished cleanly while the Guard thinks the database
    is down, report the healthy answer (views that use a session directly never
    go through ``guard.call``, so nobody else would)."""
    if guard is None:
        return
    try:
        if guard.breaker_state == "closed" and guard.state.up:
            return
        guard.record_success(op=route)
    except Exception:  # pragma: no cover - defensive
        logger.debug("record_success failed", exc_info=True)


def rollback(sessions: Iterable[Any]) -> None:
    """Roll back SQLAlchemy sessions after a fault; never raises."""
    for session in sessions:
        if session is None:
            continue
        try:
            session.rollback()
        except Exception:
            logger.debug("session rollback after a database fault failed", exc_info=True)


# --------------------------------------------------------------------------- budget

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "outlast_request_deadline", default=None
)


def budget_remaining() -> float | None:
    """Seconds left in the current request's budget (None outside a request).

    Pass it on: ``guard.call(fetch, deadline=outlast.budget_remaining())``.
    Never negative.
    """
    deadline = _deadline.get()
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)


@dataclass(frozen=True, slots=True)
class RequestBudget:
    """The longest a database-backed request may run (seconds)."""

    seconds: float = DEFAULT_BUDGET

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            from ._errors import ConfigurationError

            raise ConfigurationError(
                f"budget must be a positive number of seconds, not {self.seconds!r}"
            )

    def start(self) -> contextvars.Token[float | None]:
        """Start the clock for the current request (in this context)."""
        return _deadline.set(time.monotonic() + self.seconds)

    @staticmethod
    def finish(token: contextvars.Token[float | None]) -> None:
        try:
            _deadline.reset(token)
        except ValueError:  # a different context (e.g. a thread pool hop)
            _deadline.set(None)


def _deadline_for(guard: Guard, reserve: float) -> float | None:
    """The deadline to hand to the Guard: the rest of the budget minus one attempt.

    The Guard only starts a retry whose sleep ends before its deadline, so
    keeping `reserve` (the worst case of one attempt) back means a retry never
    starts unless it can finish inside the budget.
    """
    remaining = budget_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise RequestBudgetExceeded(
            "request budget exhausted", retry_after=_guard_retry_after(guard) or 1.0
        )
    return max(remaining - reserve, 0.0)


def call_within_budget(
    guard: Guard, fn: Callable[..., Any], /, *args: Any, reserve: float = 0.0, **kwargs: Any
) -> Any:
    """``guard.call`` with the rest of the request budget as its deadline."""
    kwargs.setdefault("deadline", _deadline_for(guard, reserve))
    return guard.call(fn, *args, **kwargs)


async def acall_within_budget(
    guard: Guard, fn: Callable[..., Any], /, *args: Any, reserve: float = 0.0, **kwargs: Any
) -> Any:
    """``guard.acall`` with the rest of the request budget as its deadline."""
    kwargs.setdefault("deadline", _deadline_for(guard, reserve))
    return await guard.acall(fn, *args, **kwargs)


# --------------------------------------------------------------------------- routes

_MARK: Final = "__outlast_db_route__"


def db_route(view: _F) -> _F:
    """Mark a view as a database route (checked against the breaker first)."""
    setattr(view, _MARK, True)
    return view


def no_db(view: _F) -> _F:
    """Mark a view as not using the database: no breaker check, no budget."""
    setattr(view, _MARK, False)
    return view


DbRoutes = Literal["all", "marked"]


@dataclass(frozen=True)
class WebConfig:
    """Settings shared by every framework integration.

    `db_routes` decides which views are database routes: ``"all"`` (the
    default: every view except health endpoints, `exempt` path prefixes and
    views marked `no_db`) or ``"marked"`` (only views marked `db_route`).
    A database route gets ``guard.check()`` before the view runs (so an open
    breaker answers 503 in microseconds without touching the database) and
    the request budget.
    """

    budget: float = DEFAULT_BUDGET
    db_routes: DbRoutes = "all"
    exempt: tuple[str, ...] = ()
    health_prefix: str = "/health"
    ready_fail_on_db: bool = False
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    attempt_reserve: float = 0.0
    record_faults: bool = True

    def __post_init__(self) -> None:
        RequestBudget(self.budget)  # validates
        if self.db_routes not in ("all", "marked"):
            from ._errors import ConfigurationError

            raise ConfigurationError(f"db_routes must be 'all' or 'marked', not {self.db_routes!r}")
        object.__setattr__(self, "health_prefix", "/" + self.health_prefix.strip("/"))

    def is_health_path(self, path: str) -> bool:
        prefix = self.health_prefix
        return path == prefix or path.startswith(prefix + "/")

    def is_db_route(self, path: str, view: object | None) -> bool:
        """True when the request at `path` served by `view` uses the database."""
        if self.is_health_path(path):
            return False
        mark = getattr(view, _MARK, None) if view is not None else None
        if mark is not None:
            return bool(mark)
        if self.db_routes == "marked":
            return False
        return not any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.exempt)


# --------------------------------------------------------------------------- health

HealthStatus = Literal["pass", "warn", "fail"]
_STARTED: Final = time.time()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _now_iso() -> str:
    return _iso(time.time()) or ""


@dataclass(frozen=True)
class HealthConfig:
    """What a health document describes."""

    service: str = "outlast"


def _worst(*statuses: str) -> HealthStatus:
    if "fail" in statuses:
        return "fail"
    if "warn" in statuses:
        return "warn"
    return "pass"


def _state_check(guard: Guard, status: str) -> dict[str, Any]:
    state: DatabaseState = guard.state
    fault = state.last_fault
    check: dict[str, Any] = {
        "componentId": guard.name,
        "componentType": "datastore",
        "status": status,
        "time": _now_iso(),
        "up": state.up,
        "breaker": state.breaker,
        "down_since": _iso(state.down_since),
        "outages": state.outages,
        "downtime_s": round(state.downtime, 3),
    }
    if fault is not None and state.down:
        # A reason word only: fault messages can name hosts.
        check["output"] = f"{fault.kind.name.lower()}: {fault.reason}"
    return check


def health_live() -> tuple[int, dict[str, Any]]:
    """Liveness: the process answers. Never touches the database."""
    return 200, {
        "status": "pass",
        "description": "liveness (never touches the database)",
        "checks": {
            "uptime": [
                {
                    "componentType": "system",
                    "observedValue": round(time.time() - _STARTED, 3),
                    "observedUnit": "s",
                    "status": "pass",
                    "time": _now_iso(),
                }
            ]
        },
    }


def _supervisor_checks(supervisor: Any) -> tuple[HealthStatus, dict[str, Any]]:
    try:
        doc = supervisor.health()
    except Exception:
        logger.debug("supervisor.health() failed", exc_info=True)
        return "fail", {"supervisor:tasks": [{"status": "fail", "output": "health() failed"}]}
    raw = doc.get("status", "pass")
    status: HealthStatus = raw if raw in ("pass", "warn", "fail") else "warn"
    tasks = doc.get("tasks", {}) or {}
    entries = []
    for name, task in tasks.items():
        task_state = task.get("state") if isinstance(task, Mapping) else None
        entries.append(
            {
                "componentId": name,
                "componentType": "component",
                "status": (
                    "fail"
                    if task_state == "failed"
                    else "warn"
                    if task_state in ("stalled", "restarting")
                    else "pass"
                ),
                "observedValue": task_state,
                "time": _now_iso(),
            }
        )
    return status, {"supervisor:tasks": entries}


def health_ready(
    guard: Guard | None,
    *,
    fail_on_db: bool = False,
    supervisor: Any = None,
    ready: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Readiness, from what the Guard already knows (no query).

    By default the database being down only makes this ``warn`` (still 200):
    if every pod turned unready, clients would get refused connections
    instead of 503s. ``fail_on_db=True`` turns that into ``fail``/503.
    """
    checks: dict[str, Any] = {}
    statuses: list[str] = []
    started = True
    if ready is not None:
        try:
            started = bool(ready())
        except Exception:
            started = False
    checks["startup:ready"] = [
        {"componentType": "system", "status": "pass" if started else "fail", "time": _now_iso()}
    ]
    statuses.append("pass" if started else "fail")
    if guard is not None:
        down = guard.state.down
        db_status = ("fail" if fail_on_db else "warn") if down else "pass"
        checks["postgres:connection"] = [_state_check(guard, db_status)]
        statuses.append(db_status)
    if supervisor is not None:
        sup_status, sup_checks = _supervisor_checks(supervisor)
        checks.update(sup_checks)
        statuses.append(sup_status)
    status = _worst(*statuses)
    return (503 if status == "fail" else 200), {
        "status": status,
        "description": "readiness",
        "checks": checks,
    }


def health_db_result(
    guard: Guard, ok: bool, latency: float | None, error: BaseException | None
) -> tuple[int, dict[str, Any], str | None]:
    """Build the /health/db document from a ping outcome."""
    status: HealthStatus = "pass" if ok else "fail"
    check = _state_check(guard, status)
    if latency is not None:
        check["observedValue"] = round(latency * 1000.0, 2)
        check["observedUnit"] = "ms"
    if not ok:
        fault = getattr(error, "fault", None)
        if isinstance(error, RequestBudgetExceeded | TimeoutError):
            check["output"] = "timeout: health check timed out"
        elif isinstance(error, DatabaseUnavailable) and fault is None:
            check["output"] = "unavailable: breaker open"
        elif "output" not in check:
            try:
                f = fault if isinstance(fault, Fault) else _classify(error) if error else None
            except Exception:
                f = None
            check["output"] = f"{f.kind.name.lower()}: {f.reason}" if f else "unavailable"
    retry_after = None if ok else retry_after_header(_retry_after_of(error, guard))
    return (
        (200 if ok else 503),
        {
            "status": status,
            "description": "database",
            "checks": {"postgres:responseTime": [check]},
        },
        retry_after,
    )


def _retry_after_of(error: BaseException | None, guard: Guard) -> float | None:
    if isinstance(error, DatabaseUnavailable) and error.retry_after:
        return error.retry_after
    return _guard_retry_after(guard)


class SyncProbe:
    """Runs ``SELECT 1`` through the Guard in a helper thread, one at a time.

    A blocking driver cannot always be interrupted (a blackholed socket), so the
    health request waits at most `timeout` and answers 503; a probe still stuck
    from an earlier request is not piled on: the next one answers at once.
    """

    def __init__(self, guard: Guard, ping: Callable[[], object], timeout: float) -> None:
        self.guard = guard
        self.ping = ping
        self.timeout = timeout
        self._lock = threading.Lock()
        self._busy: threading.Event | None = None

    def run(self) -> tuple[int, dict[str, Any], str | None]:
        with self._lock:
            if self._busy is not None and not self._busy.is_set():
                return health_db_result(self.guard, False, None, TimeoutError())
            done = threading.Event()
            self._busy = done
        box: dict[str, Any] = {}

        def probe() -> None:
            start = time.monotonic()
            try:
                self.guard.call(self.ping, idempotent=True, op="health_db", deadline=self.timeout)
                box["latency"] = time.monotonic() - start
            except BaseException as exc:  # reported to the health request
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=probe, name="outlast-health-db", daemon=True).start()
        if not done.wait(self.timeout):
            return health_db_result(self.guard, False, None, TimeoutError())
        if "error" in box:
            return health_db_result(self.guard, False, None, box["error"])
        return health_db_result(self.guard, True, box["latency"], None)


async def health_db_async(
    guard: Guard, ping: Callable[[], Any], timeout: float
) -> tuple[int, dict[str, Any], str | None]:
    """``SELECT 1`` through ``guard.acall`` with a timeout (async apps)."""
    import asyncio

    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await guard.acall(ping, idempotent=True, op="health_db", deadline=timeout)
    except Exception as exc:
        return health_db_result(guard, False, None, exc)
    return health_db_result(guard, True, time.monotonic() - start, None)


def health_db(guard: Guard, probe: SyncProbe | None) -> tuple[int, dict[str, Any], str | None]:
    """The /health/db answer for sync apps (state only if there is no probe)."""
    if probe is None:
        ok = guard.state.up
        return health_db_result(guard, ok, None, None if ok else DatabaseUnavailable())
    return probe.run()


def health_paths(prefix: str) -> dict[str, str]:
    """{"live": "/health/live", ...} under `prefix`."""
    prefix = "/" + prefix.strip("/")
    return {name: f"{prefix}/{name}" for name in ("live", "ready", "db")}


def engine_ping(engine: Any) -> Callable[[], object]:
    """A ``SELECT 1`` through a SQLAlchemy Engine (duck-typed: no import)."""

    def ping() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    return ping


def async_engine_ping(engine: Any) -> Callable[[], Any]:
    """A ``SELECT 1`` through a SQLAlchemy AsyncEngine (duck-typed)."""

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    return ping
