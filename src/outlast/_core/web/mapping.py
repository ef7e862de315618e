"""The framework-neutral half of the web integrations (standard library only).

`outlast.flask`, `outlast.starlette` and `outlast.django` are thin shells around
this module. It decides:

- which exceptions become a ``503`` (`map_exception`): `DatabaseUnavailable`,
  `CommitOutcomeUnknown`, and every fault `classify()` recognises except
  PERMANENT ones, which stay ``500`` with a generic body;
- the bodies: RFC 9457 ``application/problem+json`` that keeps the seeds'
  ``error``/``detail``/``status`` fields (``error`` is ``OUTCOME_UNKNOWN`` for
  `CommitOutcomeUnknown`, and for any failure while a COMMIT of the request
  was in flight or unresolved: the write may have been applied), and never any
  SQL, parameter, host name or traceback;
- the ``Retry-After`` value (`retry_after_header`: whole seconds, at least 1);
- who hears of a fault raised outside ``guard.call`` (`record_fault`: the
  Guard, once, with the `Fault` already classified) and how it is logged.

The options and route marks live in `options`, the budget-bound calls in
`calls`, the health documents in `health`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from outlast._core.connections.statements import BUDGET_RAN_OUT
from outlast._core.faults.classify import classify
from outlast._core.faults.errors import (
    CommitOutcomeUnknown,
    DatabaseUnavailable,
    RequestBudgetExceeded,
)
from outlast._core.faults.fault import Fault, FaultKind
from outlast._core.faults.redact import redact
from outlast._core.guard.base import counted_by
from outlast._core.timing.budget import commit_outcome_pending

from .calls import guard_retry_after

if TYPE_CHECKING:
    from outlast._core.guard.guard import Guard

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "Mapped",
    "classify_for",
    "fault_labels",
    "log_fault",
    "map_exception",
    "problem_body",
    "record_fault",
    "record_success",
    "retry_after_header",
    "rollback",
]

logger = logging.getLogger("outlast")

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
#: Retry-After never exceeds this (an hour): a client should come back eventually.
MAX_RETRY_AFTER: Final = 3600

# --------------------------------------------------------------------------- bodies


def retry_after_header(seconds: float | None) -> str:
    """``Retry-After`` as RFC 9110 delay-seconds: a whole number, at least 1.

    Rounds up (a client told "1" after a 1.2 s breaker period would come back
    too early); NaN, infinities and missing values become 1; capped at an hour.
    """
    if seconds is None or not math.isfinite(seconds):
        return "1"
    return str(min(max(math.ceil(seconds), 1), MAX_RETRY_AFTER))


def problem_body(status: int = 503, *, outcome_unknown: bool = False) -> dict[str, Any]:
    """The RFC 9457 problem document for a 503 (or the generic one for a 500).

    ``outcome_unknown``: the 503 for `CommitOutcomeUnknown`. Its ``error`` is
    ``OUTCOME_UNKNOWN`` instead of ``SERVICE_UNAVAILABLE``, because the write
    may have been applied: a client must check before sending it again.
    """
    if status == 503 and outcome_unknown:
        return {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "The outcome of the request is unknown: it may have been applied",
            "error": "OUTCOME_UNKNOWN",
        }
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
    """A problem document as compact UTF-8 JSON."""
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
        """Always ``application/problem+json``."""
        return PROBLEM_CONTENT_TYPE


def unavailable(
    retry_after: float | None, fault: Fault | None = None, *, outcome_unknown: bool = False
) -> Mapped:
    """The 503 answer (``outcome_unknown``: for a COMMIT whose outcome is unknown)."""
    return Mapped(
        503,
        dumps(problem_body(503, outcome_unknown=outcome_unknown)),
        (("Retry-After", retry_after_header(retry_after)), ("Cache-Control", "no-store")),
        fault,
    )


def internal_error(fault: Fault | None = None) -> Mapped:
    """The generic 500 answer for a PERMANENT database fault."""
    return Mapped(500, dumps(problem_body(500)), (("Cache-Control", "no-store"),), fault)


# --------------------------------------------------------------------------- mapping


def classify_for(guard: Guard | None, exc: BaseException) -> Fault | None:
    """`exc` as the Guard's classifier sees it (`outlast.classify` without a Guard)."""
    if guard is not None:
        return guard.classify(exc)
    return classify(exc)


def map_exception(exc: BaseException, guard: Guard | None = None) -> Mapped | None:
    """Decide how an exception raised while serving a request is answered.

    Returns None for exceptions that are not database faults: the framework
    handles those as usual. Database faults become a 503 with ``Retry-After``
    (every kind but PERMANENT, which becomes a generic 500); the 503 says
    ``OUTCOME_UNKNOWN`` for `CommitOutcomeUnknown`, for a COMMIT_UNKNOWN fault
    (a view's own commit lost its connection) and whenever a COMMIT of the
    current request is still unresolved (`commit_outcome_pending`).
    """
    # A COMMIT of this request was in flight or being resolved when it failed
    # (its budget ran out, the breaker refused the pg_xact_status question...):
    # the write may have been applied, so the client must not be told it was not.
    unknown = commit_outcome_pending()
    if isinstance(exc, DatabaseUnavailable):
        ra = exc.retry_after if exc.retry_after else guard_retry_after(guard)
        return unavailable(ra, exc.fault, outcome_unknown=unknown)
    if isinstance(exc, CommitOutcomeUnknown):
        return unavailable(guard_retry_after(guard), exc.fault, outcome_unknown=True)
    fault = classify_for(guard, exc)  # never raises
    if fault is None:
        return None
    if fault.kind is FaultKind.PERMANENT:
        return internal_error(fault)
    unknown = unknown or fault.kind is FaultKind.COMMIT_UNKNOWN
    return unavailable(guard_retry_after(guard), fault, outcome_unknown=unknown)


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


def fault_labels(exc: BaseException, mapped: Mapped) -> tuple[str, str]:
    """``(kind, reason)`` of a mapped fault, for logs and metrics (a bounded vocabulary)."""
    if isinstance(exc, RequestBudgetExceeded):
        return "TIMEOUT", "request_budget_exceeded"
    fault = mapped.fault
    if fault is None:
        return "UNAVAILABLE", type(exc).__name__
    return fault.kind.name, fault.reason


def log_fault(exc: BaseException, mapped: Mapped, route: str) -> None:
    """Log a mapped fault once per exception (no traceback, no SQL, redacted)."""
    if getattr(exc, "_outlast_logged", False):
        return
    try:
        exc._outlast_logged = True  # type: ignore[attr-defined]
    except Exception:
        pass
    fault = mapped.fault
    kind, reason = fault_labels(exc, mapped)
    message = redact(fault.message if fault is not None else str(exc))
    if mapped.status == 503:
        retry_after = dict(mapped.headers).get("Retry-After", "1")
        # During an outage every request is a 503: one WARNING per route and
        # reason every LOG_EVERY seconds, the rest at DEBUG.
        level = logging.WARNING if _first_in_a_while((route, reason)) else logging.DEBUG
        logger.log(
            level,
            "[DB_UNAVAILABLE] route=%s status=503 kind=%s reason=%s retry_after=%s msg=%s",
            redact(route),
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
            redact(route),
            mapped.status,
            kind,
            reason,
            sqlstate,
            message,
            extra={"outlast_route": route, "outlast_reason": reason},
        )


def record_fault(guard: Guard | None, exc: BaseException, route: str, fault: Fault | None) -> None:
    """Tell the Guard about a fault raised outside ``guard.call``, with its `Fault`.

    Classified once (by `map_exception`) and passed along; counted once: the
    Guard's own calls, the hardened engines and a probe's release mark what
    they judged, and the Guard skips what it already judged.
    """
    if guard is None or counted_by(exc, guard):
        return
    if isinstance(exc, RequestBudgetExceeded):
        # A database route ran out of time waiting: not an answer, not an
        # outage. The Guard hears it as such (the database is "unanswered"
        # until it answers again), so no health report calls silence health.
        fault = BUDGET_RAN_OUT
    elif isinstance(exc, DatabaseUnavailable):
        return
    try:
        guard.record_failure(exc, op=route, fault=fault)
    except Exception:  # pragma: no cover - defensive: never turn a 503 into a 500
        logger.debug("record_failure failed", exc_info=True)


def record_success(guard: Guard | None, route: str) -> None:
    """After a database route finished cleanly while the Guard thinks the database
    is down (or unanswered since a client-side timeout), report the healthy
    answer (views that use a session directly never go through ``guard.call``,
    so nobody else would)."""
    if guard is None:
        return
    try:
        if guard.breaker_state == "closed" and guard.state.answering:
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
