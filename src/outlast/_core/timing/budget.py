"""The request budget: how long one unit of work (a web request) may still take.

A budget is a core concept, not a web one: the web integrations start one per
request, but the layers below read it -- a connect retry never sleeps past it,
a statement's socket deadline never outlives it, a transaction never retries
beyond it. When it starts, a mutable `RequestState` goes into a context
variable, so code deep inside a view can ask `budget_remaining()`. The state is
one shared object, not a value: tasks and threads that copy the request's
context (FastAPI runs sync endpoints in a thread pool) see, and update, the
same one. Its `deadline` is an instant on the monotonic clock.

It also remembers whether a COMMIT of this request is in flight or being
resolved (`CommitWatch`, driven by ``Guard.transaction``). When the request
then fails, whatever the reason (its budget ran out, the breaker refused the
``pg_xact_status`` question), nobody may claim the write was not applied
(`commit_outcome_pending`).
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from typing import Final

from outlast._core.faults.errors import ConfigurationError
from outlast._core.timing.durations import Seconds
from outlast._core.timing.durations import seconds as as_seconds

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_ANSWER_MARGIN",
    "CommitWatch",
    "RequestBudget",
    "RequestState",
    "budget_remaining",
    "commit_outcome_pending",
    "default_answer_margin",
    "note_committed_write",
    "note_outcome_unknown",
]

DEFAULT_BUDGET: Final = 5.0
#: The most of a budget kept back for sending the answer (`default_answer_margin`).
MAX_ANSWER_MARGIN: Final = 0.2


@dataclass(slots=True)
class RequestState:
    """One request's budget: its deadline and its unresolved COMMITs (mutable)."""

    deadline: float
    unresolved_commits: int = 0
    committed_writes: int = 0


_current: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "outlast_request", default=None
)


def budget_remaining() -> float | None:
    """Seconds left in the current request's budget (None outside a request).

    Pass it on: ``guard.call(fetch, timeout=outlast.budget_remaining())``.
    Never negative.
    """
    state = _current.get()
    if state is None:
        return None
    return max(state.deadline - time.monotonic(), 0.0)


def commit_outcome_pending() -> bool:
    """True when a failure of the current request must not be called "not applied".

    That is while a COMMIT of the request is in flight or unresolved, and
    after one of its transactions that wrote something committed (a read
    after the COMMIT -- ``session.refresh()`` -- that fails does not undo
    the write): the write may have been, or was, applied.
    """
    state = _current.get()
    return state is not None and (state.unresolved_commits > 0 or state.committed_writes > 0)


def note_outcome_unknown() -> None:
    """A write of the current request may have been applied, unknown to anyone (no-op outside).

    For a write sent outside any transaction (autocommit) whose answer was
    lost: there is no COMMIT to resolve.
    """
    note_committed_write()


def note_committed_write() -> None:
    """A transaction of the current request that wrote something committed (no-op outside)."""
    state = _current.get()
    if state is not None:
        state.committed_writes += 1


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


def default_answer_margin(budget: float) -> float:
    """The part of a budget kept for answering: 0.2 s, or a fifth of a budget under 1 s."""
    return min(MAX_ANSWER_MARGIN, budget / 5)


@dataclass(frozen=True, slots=True, init=False)
class RequestBudget:
    """The longest a database-backed request may run (a timeout: seconds or a timedelta).

    The contract: a request is *answered* within `seconds` of its arrival.
    The work -- queries, retries, resolving a lost COMMIT -- gets `seconds`
    minus `margin`; the margin is what building and sending the 503 needs
    once the work has been cut short (a socket shut down, a task cancelled,
    a thread on a loaded machine scheduled late). So `budget_remaining()`
    counts down to ``arrival + seconds - margin``.
    """

    seconds: float
    margin: float

    def __init__(self, seconds: Seconds = DEFAULT_BUDGET, *, margin: Seconds | None = None) -> None:
        total = as_seconds(seconds, "budget", allow_zero=False)
        kept = default_answer_margin(total) if margin is None else as_seconds(margin, "margin")
        if kept >= total:
            raise ConfigurationError(
                f"answer_margin ({kept:g}s) must be shorter than the budget ({total:g}s)"
            )
        object.__setattr__(self, "seconds", total)
        object.__setattr__(self, "margin", kept)

    @property
    def work(self) -> float:
        """Seconds the work of a request may take: `seconds` minus `margin`."""
        return self.seconds - self.margin

    def start(self) -> contextvars.Token[RequestState | None]:
        """Start the clock for the current request (in this context)."""
        return _current.set(RequestState(time.monotonic() + self.seconds - self.margin))

    @staticmethod
    def finish(token: contextvars.Token[RequestState | None]) -> None:
        """End the request's budget (the token is what `start` returned)."""
        try:
            _current.reset(token)
        except ValueError:  # a different context (e.g. a thread pool hop)
            _current.set(None)
