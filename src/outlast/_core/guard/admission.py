"""`Admission`: the breaker's say over work that does not run inside `Guard.call`.

A web view that queries through the ORM or an engine, rather than through
``guard.call``, still needs the breaker's rule that a half-open breaker lets
exactly one probe through at a time; ``guard.check()`` alone only says "a
probe would be admitted now", so every request arriving in the same instant
goes to a recovering database together (Polly#216). `Guard.admit` takes the
decision for the whole unit of work instead:

- closed and healthy: returns the shared `PASS` (no lock, nothing allocated);
- open, or half-open with a probe already in flight: raises
  `DatabaseUnavailable` at once;
- half-open with the probe slot free: this unit of work is the probe. It gets
  an `Admission` that holds the slot and marks the context (`ADMITTED`), so
  the checks made inside it (``guard.check()``, a hardened pool's checkout,
  ``guard.call``) let it through. `Admission.release` gives the verdict and
  frees the slot.

The verdict is only given if nobody gave it first: the work's own calls and
the engines' hooks report successes and faults as they happen, and the first
of those settles the probe (the breaker clears the probe's token). So release
counts nothing twice. No lock is held while the admitted work runs.
"""

from __future__ import annotations

from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING

from outlast._core.faults.errors import DatabaseUnavailable
from outlast._core.faults.fault import Fault

from .base import ADMITTED, Run, counted_by, mark_counted
from .events import Event
from .first_use import CURRENT as FIRST_USE

if TYPE_CHECKING:
    from .base import GuardBase

__all__ = ["PASS", "Admission", "admit", "admit_now"]


class Admission:
    """The right to run one unit of work against the database (`Guard.admit`).

    Use it as a context manager (``with guard.admit(op="report"): ...``, or
    ``async with``), or call `release` yourself when the work ends somewhere
    else than it started (Django's ``process_view``/``process_response``).
    Only the half-open probe holds anything; every other admission is the
    shared `PASS`, whose `release` does nothing.
    """

    __slots__ = ("_holder", "_op", "_reset", "_token")

    def __init__(
        self,
        guard: GuardBase | None = None,
        token: int = 0,
        op: str = "admit",
        *,
        mark: bool = True,
    ) -> None:
        # `_holder` is the Guard while the probe slot is held, None after release:
        # `GuardBase._admitted` looks at it, so a context that outlives the
        # admission (a thread pool's copy, an abandoned task) stops passing checks.
        self._holder = guard
        self._token = token
        self._op = op
        self._reset: Token[object | None] | None = None
        if guard is not None and mark:
            self._reset = ADMITTED.set(self)

    @property
    def probe(self) -> bool:
        """True while this admission holds the half-open probe slot."""
        return self._holder is not None

    def __repr__(self) -> str:
        if self._holder is not None:
            return f"<outlast.Admission probe op={self._op!r} guard={self._holder.name!r}>"
        return "<outlast.Admission pass>" if self._token == 0 else "<outlast.Admission released>"

    def release(self, error: BaseException | None = None, *, verdict: bool = True) -> None:
        """End the admission; safe to call more than once (only the first counts).

        As the probe, unless the work's own calls already settled it:
        ``error=None`` records a success (the breaker closes); a database
        fault that counts (`Breaker.counts`) records a failure (it opens
        again); a fault that proves the database answered (a conflict, a bad
        query) is a success. Anything else (a non-database error, a
        cancellation, `DatabaseUnavailable`, or ``verdict=False``, e.g. for a
        5xx response the view built itself) only frees the slot, and the next
        caller probes.
        """
        guard = self._holder
        if guard is None:
            return
        outcome = _outcome(guard, error) if verdict else None
        if outcome is not None and error is not None:
            mark_counted(error, guard)  # judged here: nobody counts it again
        events: list[Event] = []
        now = guard._clock.monotonic()
        with guard._lock:
            if self._holder is None:  # another thread released it meanwhile
                return
            self._holder = None
            guard._settle_probe_locked(self._token, outcome, self._op, now, events)
        reset, self._reset = self._reset, None
        if reset is not None:
            try:
                ADMITTED.reset(reset)
            except (ValueError, RuntimeError):
                # Released from another context (or out of order): the value
                # left there is inert, since `_holder` is None now.
                pass
        if events:
            guard._emit(events)

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(exc)

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(exc)


class _Pass(Admission):
    """`PASS`: every method a no-op, without even the extra call (the closed path is hot)."""

    __slots__ = ()

    def release(self, error: BaseException | None = None, *, verdict: bool = True) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


#: The admission of everything but the probe: it holds nothing.
PASS: Admission = _Pass()


def _outcome(guard: GuardBase, error: BaseException | None) -> Fault | bool | None:
    """What the probe's end says: True (healthy), a counted Fault, or None (nothing)."""
    if error is None:
        return True
    if not isinstance(error, Exception) or isinstance(error, DatabaseUnavailable):
        # Cancelled or interrupted: says nothing. DatabaseUnavailable is outlast's
        # own answer: counted where it arose (or a request budget that ran out).
        return None
    fault = guard.classify(error)
    if fault is None or counted_by(error, guard):
        return None
    verdict = guard.evidence(fault)
    return fault if verdict is False else verdict


def admit(guard: GuardBase, op: str | None) -> Admission:
    """The slow path of `Guard.admit` (the breaker is not plainly closed)."""
    if guard._admitted():
        return PASS  # inside the probe (or a call) this Guard already admitted
    first_use = FIRST_USE.get()
    if first_use is not None and first_use.serves(guard):
        # Inside a request admitted on first use: admitting work inside it
        # takes the request's admission (the request is the probe, if any).
        first_use.take()
        return PASS
    return admit_now(guard, op)


def admit_now(guard: GuardBase, op: str | None, *, mark: bool = True) -> Admission:
    """The breaker's decision for one unit of work, whatever the context says.

    `mark`: the admission marks this context (`ADMITTED`), so checks made in
    it pass; `FirstUse` keeps its probe itself and does not mark the context
    of the hook that happened to take it.
    """
    name = op if op is not None else "admit"
    token = guard._breaker_admit(Run(name, False, None, None))  # raises when rejected
    if token == 0:
        return PASS
    return Admission(guard, token, name, mark=mark)
