"""Events a Guard reports, their dispatch, and the default logging listener.

Listeners are plain callables ``fn(event) -> None``. They run in the thread
(or task) that caused the event, outside every lock; one that raises is
logged and skipped, never breaking the guarded call.

`log_event` (installed on every Guard by default) writes to
``logging.getLogger("outlast")`` with the tags operators already grep for::

    [DB_DOWN] op=fetch_leads try=1/5 sleep=0.1s reason=connection_refused
    [DB_GAVE_UP] op=fetch_leads after 5 attempts elapsed=1.6s reason=connection_refused why=attempts
    [BREAKER_OPEN] guard=main for=1s reason=connection_refused trips=1
    [BREAKER_CLOSED] guard=main after=3.2s
    [DB_RECOVERED] op=fetch_leads after 7 attempts downtime=3.2s

Every record also carries structured fields in ``extra`` (``outlast_event``,
``guard``, ``op``, ``reason``, ...). Nothing logged comes from ``str()`` of a
driver exception: only the `Fault`'s redacted reason and SQLSTATE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from outlast._core.faults.fault import Fault

__all__ = [
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "CallRejected",
    "CommitResolved",
    "DatabaseDown",
    "DatabaseRecovered",
    "Event",
    "Listener",
    "RetryGaveUp",
    "RetryScheduled",
    "add_process_listener",
    "emit",
    "log_event",
    "process_listeners",
    "remove_process_listener",
]

logger = logging.getLogger("outlast")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: which Guard, which operation, when (epoch seconds)."""

    guard: str
    op: str | None
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseDown(Event):
    """The first counted failure of an outage."""

    fault: Fault


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """Try `attempt` of `attempts` failed; the call sleeps `sleep` seconds and tries again."""

    fault: Fault
    attempt: int
    attempts: int
    sleep: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(Event):
    """A call stops retrying and raises.

    `why` is ``"attempts"`` (limit reached), ``"deadline"`` (the next sleep
    would end past it), ``"breaker_open"``, ``"probe"`` (a failed half-open
    probe is never retried) or ``"not_retryable"`` (the fault table forbids
    a retry, e.g. a statement that may have run and is not idempotent).
    """

    fault: Fault
    attempts: int
    elapsed: float
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseRecovered(Event):
    """The first healthy answer after an outage."""

    downtime: float
    attempts: int
    down_since: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOpened(Event):
    """The breaker opened: calls fail fast for `open_for` seconds."""

    fault: Fault | None
    open_for: float
    trips: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerHalfOpen(Event):
    """A half-open probe was admitted (emitted in the probe's own thread or task)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerClosed(Event):
    """A probe succeeded; the breaker closed after being open for `opened_for` seconds."""

    opened_for: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitResolved(Event):
    """A COMMIT lost its reply and ``pg_xact_status()`` was asked what became of it.

    `outcome` is ``"committed"`` (the result stands, nothing re-run),
    ``"aborted"`` (nothing was written; the transaction is re-run) or
    ``"unknown"`` (it could not be settled in time: `CommitOutcomeUnknown`).
    """

    outcome: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    """The breaker refused a call at once (open, or half-open with its probe busy).

    Delivered only to process listeners (`add_process_listener`): during an
    outage there is one per request, too many for a log, just right for a trace.
    """

    retry_after: float


Listener = Callable[[Event], object]

_process_listeners: tuple[Listener, ...] = ()


def add_process_listener(listener: Listener) -> None:
    """Also deliver every Guard's events, in this process, to `listener` (exporters use it)."""
    global _process_listeners
    if listener not in _process_listeners:
        _process_listeners = (*_process_listeners, listener)


def remove_process_listener(listener: Listener) -> None:
    """Stop delivering events to a listener added with `add_process_listener`."""
    global _process_listeners
    _process_listeners = tuple(x for x in _process_listeners if x is not listener)


def process_listeners() -> tuple[Listener, ...]:
    """The listeners every Guard delivers to, besides its own."""
    return _process_listeners


def emit(listeners: Iterable[Listener], event: Event) -> None:
    """Deliver `event` to every listener; a failing listener is logged and skipped."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            logger.exception(
                "[LISTENER_ERROR] guard=%s listener=%s failed on %s",
                event.guard,
                getattr(listener, "__qualname__", type(listener).__qualname__),
                type(event).__name__,
                extra={"outlast_event": "listener_error", "guard": event.guard},
            )


def _s(value: float) -> str:
    """Seconds for humans: 0.05, 1.8, 12 (never scientific notation)."""
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def _fault_extra(fault: Fault | None) -> dict[str, Any]:
    if fault is None:
        return {"reason": None, "sqlstate": None, "fault_kind": None}
    return {"reason": fault.reason, "sqlstate": fault.sqlstate, "fault_kind": fault.kind.value}


def log_event(event: Event) -> None:
    """The default listener: one log line per event on the ``outlast`` logger."""
    base: dict[str, Any] = {"guard": event.guard, "op": event.op}
    if isinstance(event, RetryScheduled):
        if logger.isEnabledFor(logging.WARNING):
            logger.warning(
                "[DB_DOWN] op=%s try=%d/%d sleep=%ss reason=%s",
                event.op,
                event.attempt,
                event.attempts,
                _s(event.sleep),
                event.fault.reason,
                extra={
                    **base,
                    **_fault_extra(event.fault),
                    "outlast_event": "retry_scheduled",
                    "attempt": event.attempt,
                    "attempts": event.attempts,
                    "sleep": event.sleep,
                },
            )
    elif isinstance(event, RetryGaveUp):
        logger.error(
            "[DB_GAVE_UP] op=%s after %d attempts elapsed=%ss reason=%s why=%s",
            event.op,
            event.attempts,
            _s(event.elapsed),
            event.fault.reason,
            event.why,
            extra={
                **base,
                **_fault_extra(event.fault),
                "outlast_event": "retry_gave_up",
                "attempts": event.attempts,
                "elapsed": event.elapsed,
                "why": event.why,
            },
        )
    elif isinstance(event, DatabaseRecovered):
        logger.info(
            "[DB_RECOVERED] op=%s after %d attempts downtime=%ss",
            event.op,
            event.attempts,
            _s(event.downtime),
            extra={
                **base,
                "outlast_event": "database_recovered",
                "attempts": event.attempts,
                "downtime": event.downtime,
            },
        )
    elif isinstance(event, BreakerOpened):
        logger.warning(
            "[BREAKER_OPEN] guard=%s for=%ss reason=%s trips=%d",
            event.guard,
            _s(event.open_for),
            event.fault.reason if event.fault else None,
            event.trips,
            extra={
                **base,
                **_fault_extra(event.fault),
                "outlast_event": "breaker_opened",
                "open_for": event.open_for,
                "trips": event.trips,
            },
        )
    elif isinstance(event, BreakerClosed):
        logger.info(
            "[BREAKER_CLOSED] guard=%s after=%ss",
            event.guard,
            _s(event.opened_for),
            extra={**base, "outlast_event": "breaker_closed", "opened_for": event.opened_for},
        )
    elif isinstance(event, BreakerHalfOpen):
        logger.debug(
            "[BREAKER_HALF_OPEN] guard=%s op=%s",
            event.guard,
            event.op,
            extra={**base, "outlast_event": "breaker_half_open"},
        )
    elif isinstance(event, CommitResolved):
        unknown = event.outcome == "unknown"
        logger.log(
            logging.ERROR if unknown else logging.INFO,
            "[COMMIT_UNKNOWN] op=%s the outcome of a lost COMMIT could not be settled"
            if unknown
            else "[COMMIT_RESOLVED] op=%s outcome=%s",
            *((event.op,) if unknown else (event.op, event.outcome)),
            extra={**base, "outlast_event": "commit_resolved", "outcome": event.outcome},
        )
    elif isinstance(event, DatabaseDown):
        logger.debug(
            "[DB_STATE] guard=%s down op=%s reason=%s",
            event.guard,
            event.op,
            event.fault.reason,
            extra={**base, **_fault_extra(event.fault), "outlast_event": "database_down"},
        )
