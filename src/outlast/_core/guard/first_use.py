"""Admission on first use: a unit of work is admitted when it first reaches for the database.

A web request used to be admitted (`Guard.admit`) before its view ran. That
answers fast while the breaker is open, but it also turns every route into a
database route: a ``/ping`` that never queries, a static file, a 401 from an
auth dependency all got 503s during an outage, and -- worse -- while the
breaker was half-open they could be *the probe*, and their clean answer closed
the breaker although nothing had reached the database.

`FirstUse` defers the decision to the moment the work reaches for the
database. The web integrations put one in the request's context
(`FirstUse.enter`); the places where a request reaches for the database ask
it:

- ``guard.check()`` -- what the hardened pools call on every checkout and
  connect (SQLAlchemy, psycopg, psycopg2, asyncpg);
- ``guard.admit()`` and the retry loop of ``guard.call`` / ``web.call``;
- ``Guard.transaction`` (it checks before each attempt).

The first of them takes the admission (`take`): closed, it passes; open, it
raises `DatabaseUnavailable` (a 503); half-open, this request becomes the one
probe, or is turned away if another request is the probe. A request that
never reached for the database takes nothing, so it can neither be refused
nor close the breaker. `release` ends it: the probe's verdict (only a request
that reached the database gives one) and its slot freed.

The object is shared, not copied: tasks and threads that copy the request's
context (FastAPI runs sync endpoints and dependencies in a thread pool,
SQLAlchemy's asyncio layer runs in greenlets) see, and update, the same one.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from typing import Protocol

from outlast._core.faults.errors import DatabaseUnavailable
from outlast._core.faults.fault import Fault

__all__ = ["CURRENT", "FirstUse", "mark_reached", "reaching"]


class Admission(Protocol):
    """The part of `outlast.Admission` used here (no import: the Guard imports this module)."""

    @property
    def probe(self) -> bool: ...

    def release(self, error: BaseException | None = None, *, verdict: bool = True) -> None: ...


class Guard(Protocol):
    """The part of `outlast.Guard` used here."""

    @property
    def name(self) -> str: ...

    def classify(self, exc: BaseException, *, during_commit: bool = False) -> Fault | None: ...

    def _admit_now(self, op: str | None, *, mark: bool = True) -> Admission: ...


#: The current unit of work's `FirstUse`, or None (outside a request).
CURRENT: ContextVar[FirstUse | None] = ContextVar("outlast_first_use", default=None)


class FirstUse:
    """One request's admission, taken when it first reaches for `guard`'s database."""

    __slots__ = ("_lock", "_token", "admission", "guard", "op", "reached")

    def __init__(self, guard: Guard, op: str) -> None:
        self.guard = guard
        self.op = op
        #: The half-open probe's admission while this request holds it.
        self.admission: Admission | None = None
        #: True once the request reached for a database (a checkout, a connect,
        #: ``web.call``), whether or not an admission was needed then.
        self.reached = False
        self._lock = threading.Lock()
        self._token: Token[FirstUse | None] | None = None

    def __repr__(self) -> str:
        state = "probe" if self.probe else ("reached" if self.reached else "waiting")
        return f"<outlast.FirstUse {state} op={self.op!r} guard={self.guard.name!r}>"

    def serves(self, guard: object) -> bool:
        """Is this the admission of `guard`'s database?"""
        return self.guard is guard

    @property
    def probe(self) -> bool:
        """True while this request holds the half-open breaker's probe slot."""
        admission = self.admission
        return admission is not None and admission.probe

    def saw_fault(self, error: BaseException) -> None:
        """A database fault escaped the request: it did reach the database.

        Call it before the fault is reported to the Guard, so that while the
        breaker is half-open the report is the probe's failure (`_late`).
        """
        if self.reached:
            return
        self.reached = True
        if self.admission is None:
            self.admission = self._late(error)

    def _late(self, error: BaseException) -> Admission | None:
        """A database fault escaped a request that never asked the breaker.

        Its code reached the database some way outlast does not watch (an
        engine without outlast's hooks), and the fault proves it. While the
        breaker is half-open with the slot free, that is the probe's answer:
        admit it now, so its release reopens the breaker. A success proves
        nothing of the kind (a 401 is a success too), so only faults count.
        """
        if self.guard.classify(error) is None:
            return None
        try:
            admission = self.guard._admit_now(self.op, mark=False)
        except DatabaseUnavailable:
            return None
        return admission if admission.probe else None

    def _holds_probe(self) -> bool:
        admission = self.admission
        return admission is not None and admission.probe

    # -- the request's life ------------------------------------------------------

    def enter(self) -> FirstUse:
        """Make this the current request's admission (in this context); returns self."""
        self._token = CURRENT.set(self)
        return self

    def take(self) -> None:
        """The request reaches for the database: admit it now (raises when refused).

        Raises `DatabaseUnavailable` while the breaker is open, or half-open
        with another request as the probe. Taking again is cheap: a request
        that holds the probe passes; one that passed while the breaker was
        closed asks again (the breaker may have opened since).
        """
        self.reached = True
        if self.probe:
            return
        with self._lock:
            if self._holds_probe():  # another thread of this request took it meanwhile
                return
            admission = self.guard._admit_now(self.op, mark=False)
            if admission.probe:
                self.admission = admission

    def release(self, error: BaseException | None = None, *, verdict: bool = True) -> None:
        """End the request: the probe's verdict (see `Admission.release`), its slot freed.

        A request that never reached for the database holds nothing and says
        nothing. Also leaves the context entered with `enter`. Safe to call
        more than once.
        """
        admission, self.admission = self.admission, None
        if admission is None and error is not None and verdict and not self.reached:
            admission = self._late(error)
        if admission is not None:
            admission.release(error, verdict=verdict)
        token, self._token = self._token, None
        if token is not None:
            try:
                CURRENT.reset(token)
            except (ValueError, RuntimeError):  # released from another context
                CURRENT.set(None)


def mark_reached() -> None:
    """Note that the current request reached for a database (cheap; no admission).

    For paths that reach the database without asking the breaker (the Guard's
    fast path while everything is healthy): the request then counts as one
    that used the database (its budget may cut it short, its clean answer is
    evidence of health).
    """
    current = CURRENT.get()
    if current is not None:
        current.reached = True


class _Checks(Protocol):
    def check(self) -> None: ...


def reaching(guard: _Checks | None) -> None:
    """A statement is about to go out: inside a request admitted on first use, admit it now.

    For connections that are handed out without asking the breaker (an idle
    connection of a pool that checks nothing on checkout): the first
    statement is where the request reaches for the database. Outside such a
    request (a pool's own maintenance, a background job) it does nothing.
    """
    if guard is not None and CURRENT.get() is not None:
        guard.check()
