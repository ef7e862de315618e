"""The per-request budget of the web integrations (standard library only).

A database-backed request gets a `RequestBudget`: when it starts, a mutable
`RequestState` goes into a context variable, so code deep inside a view can
ask `budget_remaining()` and pass the rest on (``web.call``, ``web.transaction``
do it for you). The state is one shared object, not a value: tasks and
threads that copy the request's context (FastAPI runs sync endpoints in a
thread pool) see, and update, the same one.

It also remembers whether a COMMIT of this request is in flight or being
resolved (`CommitWatch`, driven by ``Guard.transaction``). When the request
then fails, whatever the reason (its budget ran out, the breaker refused the
``pg_xact_status`` question), the web layer must not claim the write was not
applied: it answers ``OUTCOME_UNKNOWN`` (`commit_outcome_pending`).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from outlast._core.faults.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from outlast._core.guard.guard import Guard

__all__ = [
    "DEFAULT_BUDGET",
    "CommitWatch",
    "RequestBudget",
    "RequestBudgetExceeded",
    "RequestState",
    "acall_within_budget",
    "atransaction_within_budget",
    "budget_exceeded",
    "budget_remaining",
    "call_within_budget",
    "commit_outcome_pending",
    "transaction_within_budget",
]

DEFAULT_BUDGET: Final = 5.0

T = TypeVar("T")


class RequestBudgetExceeded(DatabaseUnavailable):
    """The request used up its budget while waiting for the database (-> 503)."""


@dataclass(slots=True)
class RequestState:
    """One request's budget: its deadline and its unresolved COMMITs (mutable)."""

    deadline: float
    unresolved_commits: int = 0


_current: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "outlast_request", default=None
)


def budget_remaining() -> float | None:
    """Seconds left in the current request's budget (None outside a request).

    Pass it on: ``guard.call(fetch, deadline=outlast.budget_remaining())``.
    Never negative.
    """
    state = _current.get()
    if state is None:
        return None
    return max(state.deadline - time.monotonic(), 0.0)


def commit_outcome_pending() -> bool:
    """True while a COMMIT of the current request is in flight or unresolved.

    A failure of the request then means "the write may have been applied".
    """
    state = _current.get()
    return state is not None and state.unresolved_commits > 0


class CommitWatch:
    """Marks the current request while one transaction's COMMIT outcome is unknown.

    ``Guard.transaction`` calls `sent` just before COMMIT and `settled` once
    the outcome is known (COMMIT answered, or ``pg_xact_status`` said
    committed or aborted). Cancellation and errors while resolving leave the
    mark in place, which is the point. Outside a request both are no-ops.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state: RequestState | None = None

    def sent(self) -> None:
        """COMMIT is about to go out."""
        if self._state is None:
            state = _current.get()
            if state is not None:
                state.unresolved_commits += 1
                self._state = state

    def settled(self) -> None:
        """The outcome of the COMMIT (if one was sent) is known."""
        state, self._state = self._state, None
        if state is not None:
            state.unresolved_commits -= 1


@dataclass(frozen=True, slots=True)
class RequestBudget:
    """The longest a database-backed request may run (seconds)."""

    seconds: float = DEFAULT_BUDGET

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            from outlast._core.faults.errors import ConfigurationError

            raise ConfigurationError(
                f"budget must be a positive number of seconds, not {self.seconds!r}"
            )

    def start(self) -> contextvars.Token[RequestState | None]:
        """Start the clock for the current request (in this context)."""
        return _current.set(RequestState(time.monotonic() + self.seconds))

    @staticmethod
    def finish(token: contextvars.Token[RequestState | None]) -> None:
        """End the request's budget (the token is what `start` returned)."""
        try:
            _current.reset(token)
        except ValueError:  # a different context (e.g. a thread pool hop)
            _current.set(None)


def guard_retry_after(guard: Guard | None) -> float | None:
    """The Guard's ``retry_after`` (None without a Guard or if it cannot say)."""
    if guard is None:
        return None
    try:
        return float(guard.retry_after)
    except Exception:  # a broken guard must not turn a 503 into a 500
        return None


def budget_exceeded(guard: Guard | None) -> RequestBudgetExceeded:
    """The error for a request whose budget ran out (a 503 that says when to come back)."""
    return RequestBudgetExceeded(
        "request budget exhausted", retry_after=guard_retry_after(guard) or 1.0
    )


def deadline_for(guard: Guard, reserve: float) -> float | None:
    """The deadline to hand to the Guard: the rest of the budget minus one attempt.

    The Guard only starts a retry whose sleep ends before its deadline, so
    keeping `reserve` (the worst case of one attempt) back means a retry never
    starts unless it can finish inside the budget. Raises
    `RequestBudgetExceeded` when nothing is left.
    """
    remaining = budget_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise budget_exceeded(guard)
    return max(remaining - reserve, 0.0)


def call_within_budget(
    guard: Guard, fn: Callable[..., T], /, *args: Any, reserve: float = 0.0, **kwargs: Any
) -> T:
    """``guard.call`` with the rest of the request budget as its deadline."""
    kwargs.setdefault("deadline", deadline_for(guard, reserve))
    return guard.call(fn, *args, **kwargs)


async def acall_within_budget(
    guard: Guard,
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    reserve: float = 0.0,
    **kwargs: Any,
) -> T:
    """``guard.acall`` with the rest of the request budget as its deadline."""
    kwargs.setdefault("deadline", deadline_for(guard, reserve))
    return await guard.acall(fn, *args, **kwargs)


def transaction_within_budget(
    guard: Guard,
    source: Any,
    fn: Callable[..., T],
    /,
    *args: Any,
    reserve: float = 0.0,
    **kwargs: Any,
) -> T:
    """``guard.transaction`` with the rest of the request budget as its deadline."""
    kwargs.setdefault("deadline", deadline_for(guard, reserve))
    return guard.transaction(source, fn, *args, **kwargs)


async def atransaction_within_budget(
    guard: Guard,
    source: Any,
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    reserve: float = 0.0,
    **kwargs: Any,
) -> T:
    """``guard.atransaction`` with the rest of the request budget as its deadline."""
    kwargs.setdefault("deadline", deadline_for(guard, reserve))
    return await guard.atransaction(source, fn, *args, **kwargs)
