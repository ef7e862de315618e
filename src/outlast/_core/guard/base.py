"""The Guard's machinery: state, breaker transitions and retry decisions.

`GuardBase` holds everything that is neither sync nor async: admission
(`_admit`), what a failed try means (`_failed`: count it, decide to sleep or
give up), what a healthy answer means (`_succeeded`), reporting from outside a
call, and introspection. `outlast.Guard` (in `_guard`) adds the calling
surface: thin sync and async loops that only differ in ``await``.

Concurrency: one small `threading.Lock` guards the breaker and state
transitions. Methods named ``*_locked`` run under it and only append events;
events are delivered after the lock is released. No user code, listener,
sleep or await ever runs while it is held.
"""

from __future__ import annotations

import logging
import random
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from contextvars import ContextVar

from outlast._core.faults.classify import attached_fault, classify
from outlast._core.faults.errors import ConfigurationError, DatabaseUnavailable, fast_unavailable
from outlast._core.faults.fault import NO_EVIDENCE_REASONS, Fault, FaultKind
from outlast._core.timing.clock import SYSTEM_CLOCK, Clock
from outlast._core.timing.durations import Seconds, seconds

from .backoff import Retry
from .breaker import CLOSED, OPEN, REJECT, Breaker, BreakerCore
from .counters import Counters, GuardCounters
from .events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    CallRejected,
    CommitResolved,
    DatabaseDown,
    DatabaseRecovered,
    Event,
    Listener,
    RetryGaveUp,
    RetryScheduled,
    emit,
    emit_all,
    log_event,
    process_listeners,
)
from .first_use import CURRENT as FIRST_USE
from .state import DatabaseState, StateTracker

__all__ = [
    "ADMITTED",
    "COMMIT_IN_FLIGHT",
    "LIVE_GUARDS",
    "OPEN_MESSAGE",
    "Classifier",
    "GuardBase",
    "Run",
    "op_name",
    "per_call_timeout",
]

OPEN_MESSAGE = "database unavailable: circuit breaker open"

Classifier = Callable[[BaseException], Fault | None]

logger = logging.getLogger("outlast")
_random = random.random

# The Guard whose slow path (breaker not plainly closed) is running user code in
# this thread or task, or the `Admission` (see `_admission`) of a probe that
# runs outside `call` (a web request). Hooks inside that code (a pool's
# checkout calling `check()`) must not turn away the very call -- often the
# half-open probe -- that the Guard already admitted. Set only on the slow
# path, so the success path pays nothing.
ADMITTED: ContextVar[object | None] = ContextVar("outlast_admitted", default=None)

# The Guard whose `Guard.transaction` has a COMMIT in flight in this thread or
# task. A fault reported to it meanwhile (a pool's error hook meets a lost
# COMMIT before the transaction does) is the transaction's to judge, once it
# knows what became of the COMMIT: one found committed is a success, not an
# outage; one found aborted or never settled is counted then, once.
COMMIT_IN_FLIGHT: ContextVar[object | None] = ContextVar("outlast_commit_in_flight", default=None)

# One rule for counting a fault once. A Guard marks each exception it judged
# (as a failure, as proof that the database answered, or as saying nothing)
# with itself, at the one place it judged it: `record_failure`, the retry loop
# of `call`, or a probe's release. Whoever meets the same exception later --
# re-raised through `call`, wrapped by SQLAlchemy, caught by a web handler --
# asks `counted_by` and does not judge it again.
_COUNTED = "__outlast_counted_by__"
_MAX_CHAIN = 8


def mark_counted(exc: BaseException, guard: object) -> None:
    """Mark `exc` as judged by `guard` (exceptions that refuse attributes stay unmarked)."""
    try:
        setattr(exc, _COUNTED, guard)
    except (AttributeError, TypeError):  # exceptions with __slots__ or read-only
        pass


def counted_by(exc: BaseException, guard: object) -> bool:
    """Did `guard` already judge `exc`, or an error it wraps (``.orig``, ``__cause__``)?"""
    seen: BaseException | None = exc
    for _ in range(_MAX_CHAIN):
        if seen is None:
            return False
        if getattr(seen, _COUNTED, None) is guard:
            return True
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return False


LIVE_GUARDS: weakref.WeakSet[GuardBase] = weakref.WeakSet()
"""Every Guard alive in this process (the metrics exporters report on them)."""

_UNAVAILABLE_KINDS = frozenset({FaultKind.UNAVAILABLE, FaultKind.READ_ONLY})


def op_name(fn: object, op: str | None) -> str:
    """The name of an operation in events and logs: `op`, else the function's qualified name."""
    if op is not None:
        return op
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def per_call_timeout(timeout: Seconds | None, deadline: float | None) -> float | None:
    """A call's ``timeout=`` as seconds (or its deprecated name ``deadline=``)."""
    if deadline is not None:
        if timeout is not None:
            raise ConfigurationError("give timeout= only (deadline= is its deprecated name)")
        warnings.warn(
            "deadline= is deprecated: a deadline is an instant, this is a duration; use timeout=",
            DeprecationWarning,
            stacklevel=3,
        )
        timeout = deadline
    return None if timeout is None else seconds(timeout, "timeout")


class Run:
    """Per-call retry bookkeeping; exists only once something went wrong."""

    __slots__ = ("failed", "first_failure", "idempotent", "last_exc", "op", "start", "timeout")

    def __init__(
        self, op: str, idempotent: bool, timeout: float | None, start: float | None
    ) -> None:
        self.op = op
        self.idempotent = idempotent
        self.timeout = timeout  # per-call, counted from `start` (an instant)
        self.start = start
        self.failed = 0
        self.first_failure: float | None = None
        self.last_exc: BaseException | None = None


class GuardBase:
    """The state and decisions of `outlast.Guard`, which adds the calling methods.

    The options and their defaults are described on `outlast.Guard`.
    """

    __slots__ = (
        "__weakref__",
        "_calls",
        "_classifier",
        "_clock",
        "_core",
        "_counters",
        "_fast",
        "_first_opened",
        "_listeners",
        "_lock",
        "_mark_calls",
        "_mark_time",
        "_reject_until",
        "_tracker",
        "breaker",
        "name",
        "retry",
    )

    def __init__(
        self,
        name: str = "default",
        *,
        retry: Retry | None = None,
        breaker: Breaker | None = None,
        listeners: Iterable[Listener] | None = None,
        classifier: Classifier | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(f"retry must be an outlast.Retry, got {retry!r}")
        if breaker is not None and not isinstance(breaker, Breaker):
            raise ConfigurationError(f"breaker must be an outlast.Breaker, got {breaker!r}")
        if classifier is None:
            classifier = classify
        elif not callable(classifier):
            raise ConfigurationError(f"classifier must be callable, got {classifier!r}")
        self.name = name
        self.retry = retry if retry is not None else Retry()
        self.breaker = breaker if breaker is not None else Breaker()
        self._classifier = classifier
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._listeners: tuple[Listener, ...] = (
            (log_event,) if listeners is None else tuple(listeners)
        )
        self._lock = threading.Lock()
        self._core = BreakerCore(self.breaker)
        self._tracker = StateTracker()
        self._fast = True
        self._calls = 0  # fast-path calls (also the breaker window's baseline)
        self._counters = Counters()
        self._mark_calls = 0
        self._mark_time = self._clock.monotonic()
        self._reject_until = -1.0
        self._first_opened = 0.0
        LIVE_GUARDS.add(self)

    def __repr__(self) -> str:
        return f"<outlast.Guard {self.name!r} breaker={self.breaker_state}>"

    # -- reporting from outside call() ------------------------------------------

    def check(self) -> None:
        """Raise `DatabaseUnavailable` at once if the breaker would reject a call now.

        Inside a unit of work admitted on first use (a web request,
        `outlast._core.guard.first_use`), this is where it reaches for the
        database: the request is admitted here (and may become the
        half-open probe), or refused.
        """
        first_use = FIRST_USE.get()
        if self._fast:
            if first_use is not None:
                first_use.reached = True
            return
        if self._admitted():
            return
        if first_use is not None and first_use.serves(self):
            first_use.take()
            return
        now = self._clock.monotonic()
        if now < self._reject_until:
            raise self._rejection(self._reject_until - now)
        with self._lock:
            if self._core.would_admit(now):
                return
            retry_after = self._core.retry_after(now)
        raise self._rejection(retry_after)

    def record_failure(
        self, exc: BaseException, *, op: str | None = None, fault: Fault | None = None
    ) -> Fault | None:
        """Report `exc`, seen outside `call` (e.g. a pool's failed connect); return its `Fault`.

        `fault` is the classification the caller already made (classified
        once, passed along); without it the Guard's classifier decides. None
        when `exc` is not a database error. An exception this Guard already
        judged is not counted again, and one reported while a
        `Guard.transaction` of this Guard has its COMMIT in flight here is
        left for that transaction to judge.
        """
        if fault is None:
            fault = self._classify(exc)
        if fault is None or counted_by(exc, self) or COMMIT_IN_FLIGHT.get() is self:
            return fault
        mark_counted(exc, self)
        events: list[Event] = []
        now, wall = self._clock.monotonic(), self._clock.time()
        with self._lock:
            self._judge_locked(fault, op, now, wall, events)
            self._refresh_locked(now)
        self._emit(events)
        return fault

    def record_success(self, *, op: str | None = None) -> None:
        """Report a healthy answer seen outside `call` (e.g. a pool's successful check)."""
        if self._fast:
            return
        self._succeeded(op, 0)

    # -- introspection ------------------------------------------------------------

    @property
    def state(self) -> DatabaseState:
        """An immutable snapshot of what this Guard knows about its database."""
        now = self._clock.monotonic()
        with self._lock:
            return self._tracker.snapshot(now, self._core.current_state(now))

    @property
    def breaker_state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        if self._fast:
            return CLOSED
        now = self._clock.monotonic()
        with self._lock:
            return self._core.current_state(now)

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker would admit a probe (0 when it admits calls now)."""
        if self._fast:
            return 0.0
        now = self._clock.monotonic()
        with self._lock:
            return self._core.retry_after(now)

    def counters(self) -> GuardCounters:
        """What this Guard counted since it was created (see `GuardCounters`): metrics read it."""
        with self._lock:
            return self._counters.snapshot(self._calls)

    def record_commit_outcome(self, outcome: str, *, op: str | None = None) -> None:
        """Count (and tell listeners) a lost COMMIT's fate: committed, aborted or unknown."""
        with self._lock:
            self._counters.commit(outcome)
        self._emit([CommitResolved(guard=self.name, op=op, at=self._clock.time(), outcome=outcome)])

    def add_listener(self, listener: Listener) -> None:
        """Also deliver events to `listener` (called outside every lock)."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop delivering events to `listener` (ValueError if it was not added)."""
        with self._lock:
            listeners = list(self._listeners)
            listeners.remove(listener)
            self._listeners = tuple(listeners)

    def classify(self, exc: BaseException, *, during_commit: bool = False) -> Fault | None:
        """This Guard's view of `exc`: its classifier's `Fault`, or None (not a database error).

        The classifier is `outlast.classify` unless the Guard was given one;
        every layer (retries, transactions, connect retries, the web mapping)
        asks here, so a custom classifier is honoured end to end. Never
        raises. ``during_commit``: `exc` struck while COMMIT was in flight
        (outlast's classifier then says COMMIT_UNKNOWN for a lost connection).
        """
        if during_commit and self._classifier is classify:
            try:
                return classify(exc, during_commit=True)
            except Exception:  # pragma: no cover - classify does not raise
                return None
        return self._classify(exc)

    def evidence(self, fault: Fault) -> bool | None:
        """What `fault` says about the database: False unwell, True it answered, None nothing.

        False for a fault the breaker counts (`Breaker.counts`); None for one
        that never reached the server (a malformed DSN, a client-side timeout,
        the request's own budget running out); True otherwise: a conflict, a
        bad query or a server-side timeout prove the database is up.
        """
        if self.breaker.counts(fault):
            return False
        if fault.reason in NO_EVIDENCE_REASONS:
            return None
        return True

    def _classify(self, exc: BaseException) -> Fault | None:
        classifier = self._classifier
        if classifier is not classify:
            # What outlast's own layers know (a request budget that ran out)
            # beats any classifier's reading of the driver's message.
            attached = attached_fault(exc)
            if attached is not None:
                return attached
        try:
            return classifier(exc)
        except Exception as error:
            # Never log the driver exception's text: it may hold a DSN or parameters.
            logger.error(
                "[CLASSIFY_ERROR] guard=%s classifier raised %s on %s",
                self.name,
                type(error).__name__,
                type(exc).__name__,
                extra={"outlast_event": "classify_error", "guard": self.name},
            )
            return None

    def _admitted(self) -> bool:
        """Is this thread or task inside work this Guard admitted (a call, a live probe)?"""
        holder = ADMITTED.get()
        if holder is self or getattr(holder, "_holder", None) is self:
            return True
        first_use = FIRST_USE.get()
        return first_use is not None and first_use.serves(self) and first_use.probe

    def _rejection(
        self, retry_after: float, cause: BaseException | None = None
    ) -> DatabaseUnavailable:
        self._counters.rejected += 1
        if process_listeners():
            self._tell_rejected(retry_after)
        error = fast_unavailable(OPEN_MESSAGE, retry_after, self._tracker.last_fault, self.name)
        if cause is not None:
            error.__cause__ = cause
        return error

    def _tell_rejected(self, retry_after: float) -> None:
        event = CallRejected(
            guard=self.name, op=None, at=self._clock.time(), retry_after=retry_after
        )
        emit(process_listeners(), event)

    def _admit(self, run: Run) -> int:
        """0 to proceed, a probe token to proceed as the probe; raises when open."""
        if self._fast:
            return 0
        now = self._clock.monotonic()
        if now < self._reject_until:
            raise self._rejection(self._reject_until - now, run.last_exc)
        if getattr(ADMITTED.get(), "_holder", None) is self:
            # Inside work admitted with `admit()` (a web request that is the
            # probe): its calls are part of the probe and take no slot of their own.
            return 0
        first_use = FIRST_USE.get()
        if first_use is not None and first_use.serves(self):
            # A request admitted on first use: this call is where it reaches
            # for the database. Its admission is the request's, not the call's.
            first_use.take()
            return 0
        return self._breaker_admit(run, now)

    def _breaker_admit(self, run: Run, now: float | None = None) -> int:
        """The breaker's own decision: 0 to proceed, a probe token, or raise."""
        if now is None:
            if self._fast:
                return 0
            now = self._clock.monotonic()
            if now < self._reject_until:
                raise self._rejection(self._reject_until - now, run.last_exc)
        with self._lock:
            token = self._core.admit(now)
            if token == REJECT:
                retry_after = self._core.retry_after(now)
        if token == REJECT:
            raise self._rejection(retry_after, run.last_exc)
        if token > 0:
            with self._lock:
                self._counters.transition("half_open")
            try:
                self._emit([BreakerHalfOpen(guard=self.name, op=run.op, at=self._clock.time())])
            except BaseException:
                # A listener let KeyboardInterrupt/SystemExit through: the work will
                # not run, so its probe slot goes back now, not after probe_timeout.
                self._release(token)
                raise
        return token

    def _release(self, token: int) -> None:
        if token > 0:
            with self._lock:
                self._core.release(token)

    def _succeeded(self, op: str | None, token: int, retried: bool = False) -> None:
        if token == 0 and self._fast and not retried:
            return
        events: list[Event] = []
        now, wall = self._clock.monotonic(), self._clock.time()
        with self._lock:
            if retried:
                self._counters.succeeded_after_retry += 1
            self._success_locked(op, now, wall, events)
            self._core.release(token)
            self._refresh_locked(now)
        if events:
            self._emit(events)

    def _failed(self, run: Run, exc: Exception, fault: Fault, token: int) -> float:
        """Record a failed try; return the sleep before the next one, or raise."""
        now, wall = self._clock.monotonic(), self._clock.time()
        run.failed += 1
        run.last_exc = exc
        if run.first_failure is None:
            run.first_failure = now
        events: list[Event] = []
        counted = self.breaker.counts(fault)
        delay: float | None = None
        why = ""
        judged = counted_by(exc, self)  # a pool hook inside fn reported it already
        if not judged:
            mark_counted(exc, self)
        with self._lock:
            if not judged:
                self._judge_locked(fault, run.op, now, wall, events)
            self._core.release(token)
            if not Retry.retryable(fault, run.idempotent):
                why = "not_retryable"
            elif token > 0 and counted:
                why = "probe"
            elif self._core.state == OPEN:
                why = "breaker_open"
            else:
                limit: float | None
                if run.timeout is not None and run.start is not None:
                    elapsed, limit = now - run.start, run.timeout
                else:
                    elapsed, limit = now - run.first_failure, self.retry.timeout
                delay = self.retry.next_sleep(run.failed, elapsed, limit, _random())
                if delay is None:
                    why = "attempts" if run.failed >= self.retry.attempts else "deadline"
            retry_after = self._core.retry_after(now) or self.breaker.open_for
            counters = self._counters
            if delay is not None:
                counters.retries += 1
            elif run.failed > 1:
                counters.failed_after_retry += 1
            else:
                counters.failed_without_retry += 1
            self._refresh_locked(now)
        if delay is not None:
            events.append(
                RetryScheduled(
                    guard=self.name,
                    op=run.op,
                    at=wall,
                    fault=fault,
                    attempt=run.failed,
                    attempts=self.retry.attempts,
                    sleep=delay,
                )
            )
            self._emit(events)
            return delay
        if counted or fault.kind is FaultKind.CONFLICT:
            events.append(
                RetryGaveUp(
                    guard=self.name,
                    op=run.op,
                    at=wall,
                    fault=fault,
                    attempts=run.failed,
                    elapsed=now - run.first_failure,
                    why=why,
                )
            )
        self._emit(events)
        if why != "not_retryable" and fault.kind in _UNAVAILABLE_KINDS:
            raise DatabaseUnavailable(
                f"database unavailable after {run.failed} attempt"
                f"{'s' if run.failed != 1 else ''} ({fault.reason})",
                retry_after=retry_after,
                fault=fault,
                guard=self.name,
            ) from exc
        raise exc

    # -- transitions (call with the lock held; they only append events) ------------

    def _judge_locked(
        self, fault: Fault, op: str | None, now: float, wall: float, events: list[Event]
    ) -> None:
        """Count `fault` by what it says about the database (see `evidence`)."""
        self._counters.fault(fault)
        verdict = self.evidence(fault)
        if verdict is False:
            self._failure_locked(fault, op, now, wall, events)
        elif verdict is True:
            self._success_locked(op, now, wall, events)
        elif fault.kind is FaultKind.TIMEOUT:
            # The client stopped waiting: no answer, so nothing may call the
            # database healthy until it answers again (see `DatabaseState`).
            self._tracker.on_silence(wall)

    def _settle_probe_locked(
        self, token: int, outcome: Fault | bool | None, op: str, now: float, events: list[Event]
    ) -> None:
        """A probe admitted with `admit()` ended: give its verdict and free its slot.

        Only while the probe is still ours: the work's own calls or hooks may
        have settled it already, or it ran past ``probe_timeout`` and another
        probe took over; then this only frees nothing.
        """
        if not self._core.holds_probe(token):
            return
        wall = self._clock.time()
        if outcome is True:
            self._success_locked(op, now, wall, events)
        elif isinstance(outcome, Fault):
            self._failure_locked(outcome, op, now, wall, events)
        self._core.release(token)
        self._refresh_locked(now)

    def _failure_locked(
        self, fault: Fault, op: str | None, now: float, wall: float, events: list[Event]
    ) -> None:
        core = self._core
        if self._tracker.on_failure(fault, now, wall):
            events.append(DatabaseDown(guard=self.name, op=op, at=wall, fault=fault))
        baseline = 0
        if not core.windowed:
            # Fast-path calls are not time-stamped: assume they were spread evenly.
            # (The failing call itself usually came through the fast path too.)
            calls = max(self._calls - self._mark_calls - 1, 0)
            span = now - self._mark_time
            window = self.breaker.window
            baseline = calls if span <= window else int(calls * window / span)
            self._mark_calls, self._mark_time = self._calls, now
        if core.on_failure(now, baseline):
            self._counters.transition("open")
            if core.trips == 1:
                self._first_opened = now
            self._reject_until = core.open_until
            events.append(
                BreakerOpened(
                    guard=self.name,
                    op=op,
                    at=wall,
                    fault=fault,
                    open_for=core.open_until - now,
                    trips=core.trips,
                )
            )

    def _success_locked(self, op: str | None, now: float, wall: float, events: list[Event]) -> None:
        core = self._core
        if core.current_state(now) == OPEN:
            self._tracker.unanswered_since = None  # an answer all the same
            return  # admitted before the breaker opened; only a probe may close it
        if core.on_success(now):
            self._counters.transition("closed")
            events.append(
                BreakerClosed(guard=self.name, op=op, at=wall, opened_for=now - self._first_opened)
            )
        down_since = self._tracker.down_since
        downtime = self._tracker.on_success(now, wall)
        if downtime is not None and down_since is not None:
            events.append(
                DatabaseRecovered(
                    guard=self.name,
                    op=op,
                    at=wall,
                    downtime=downtime,
                    attempts=self._tracker.attempts,
                    down_since=down_since,
                )
            )

    def _refresh_locked(self, now: float) -> None:
        # While unanswered, successes take the slow path, so the first answer
        # is seen (and clears it); the fast path records nothing.
        tracker = self._tracker
        fast = self._core.healthy and tracker.up and tracker.unanswered_since is None
        if fast and not self._fast:
            self._mark_calls, self._mark_time = self._calls, now
        self._fast = fast

    def _emit(self, events: list[Event]) -> None:
        emit_all((*self._listeners, *process_listeners()), events)
