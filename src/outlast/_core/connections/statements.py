"""One statement's client-side timeout, and who is to blame when it fires.

Every exchange with the server on a hardened connection runs under a socket
deadline (`socket_deadline`): the preset's client-side statement timeout
(`Hardening.client_statement_timeout`: the server's ``statement_timeout`` plus
a grace period, so the server normally cancels first), or what is left of the
current request's budget when that is less -- a request must not wait on a dead
link after its caller gave up.

When the deadline that fires is the *budget's*, the driver reports a lost
connection, yet the database did nothing wrong: the request ran out of time.
`statement_bound` attaches the fault ``request_budget_exceeded`` (TIMEOUT) to
that error, so the Guard, the pools and the web layer see the request's
timeout, not an outage: no failure is counted, the pool drops only this
connection, the answer is a 503 for the request.

When the deadline that fires is the *preset's* own client statement timeout,
the server had ``statement_timeout`` to cancel the statement itself and a
grace period to say so, and said nothing: it (or the link to it) is not
answering at all. `statement_bound` attaches ``server_unresponsive``
(UNAVAILABLE, counted by the breaker) -- the one client-side timeout that is
evidence of an outage. A timeout the application chose (asyncpg's
``timeout=``, a short ``command_timeout`` of its own) is not: a slow query
on a healthy server hits it too (``client_timeout``, no evidence either way).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from outlast._core.faults.classify import attach_fault
from outlast._core.faults.fault import Fault, FaultKind
from outlast._core.timing.budget import budget_remaining
from outlast._core.timing.operations import OPERATIONS, error_kind

from .socket_deadline import socket_deadline

if TYPE_CHECKING:
    from .hardening import Hardening

__all__ = [
    "BUDGET_RAN_OUT",
    "SERVER_UNRESPONSIVE",
    "StatementLimit",
    "budget_ran_out",
    "server_unresponsive",
    "statement_bound",
    "statement_limit",
]

BUDGET_RAN_OUT: Final = Fault(
    kind=FaultKind.TIMEOUT,
    reason="request_budget_exceeded",
    sqlstate=None,
    phase="unknown",
    transient=False,
    message="the request's budget ran out while it waited for the database",
)
"""The fault of an exchange cut short by the request's budget (not the database's)."""

SERVER_UNRESPONSIVE: Final = Fault(
    kind=FaultKind.UNAVAILABLE,
    reason="server_unresponsive",
    sqlstate=None,
    phase="statement",
    transient=True,
    message="no answer within the client statement timeout: the server did not even cancel",
)
"""The fault of an exchange that outlived the preset's client statement timeout."""


@dataclass(frozen=True, slots=True)
class StatementLimit:
    """The client-side timeout of the next exchange and whether the budget set it."""

    timeout: float | None
    by_budget: bool = False


def statement_limit(preset: Hardening) -> StatementLimit:
    """The preset's client-side statement timeout, or the request's remaining budget if less."""
    limit = preset.client_statement_timeout
    remaining = budget_remaining()
    if remaining is not None and (limit is None or remaining < limit):
        return StatementLimit(remaining, by_budget=True)
    return StatementLimit(limit)


def budget_ran_out(exc: BaseException) -> None:
    """Say that `exc` came from the request's budget running out, not from the database."""
    attach_fault(exc, BUDGET_RAN_OUT)


def server_unresponsive(exc: BaseException) -> None:
    """Say that `exc` came from the preset's client statement timeout: the server is silent."""
    attach_fault(exc, SERVER_UNRESPONSIVE)


@contextlib.contextmanager
def statement_bound(
    fileno: int | None, preset: Hardening, timed: tuple[str | None, str] | None = None
) -> Iterator[StatementLimit]:
    """``with statement_bound(fd, preset): exchange()`` -- see the module docstring.

    `timed` (the Guard's name and the driver) also records the exchange as one
    operation in `OPERATIONS`, when an exporter turned timing on.
    """
    limit = statement_limit(preset)
    started = time.perf_counter() if timed is not None and OPERATIONS.enabled else None
    token = (
        0 if fileno is None or limit.timeout is None else socket_deadline.arm(fileno, limit.timeout)
    )
    try:
        yield limit
    except BaseException as exc:
        if token and socket_deadline.disarm(token):
            (budget_ran_out if limit.by_budget else server_unresponsive)(exc)
        if started is not None and timed is not None:
            OPERATIONS.observe(*timed, time.perf_counter() - started, error_kind(exc))
        raise
    if token:
        socket_deadline.disarm(token)
    if started is not None and timed is not None:
        OPERATIONS.observe(*timed, time.perf_counter() - started)
