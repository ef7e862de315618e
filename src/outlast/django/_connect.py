"""Connections Django opens during a request stay inside the request's budget.

Django connects lazily (``ATOMIC_REQUESTS`` before the view, the first query
otherwise), and under ASGI on every request: each request runs in a thread of
its own, and connections are per thread. Two waits there escape the query
hook that bounds statements:

- right after connecting, Django sends ``SET TIME ZONE`` (and a role) on a
  cursor of its own: on a link that went dead in between it waits for TCP to
  give up (``tcp_user_timeout``), not for the budget;
- when a request's transaction failed with its connection, ``atomic()``
  closes it and *reconnects* on its way out, only to turn autocommit back on:
  a whole connect timeout more for a request that already failed.

`guard_connects` wraps the connection's ``get_new_connection`` for the
request: the connect timeout is clamped to what is left of the budget (libpq
waits at least 2 s), the new connection gets the budget's socket deadline at
once (disarmed when the request ends), and a request that already met a
database fault does not start a connect it cannot finish in time
(`RequestBudgetExceeded`, a 503 like the fault before it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from outlast._core.connections.socket_deadline import connection_fileno, socket_deadline
from outlast._core.faults.errors import RequestBudgetExceeded
from outlast._core.guard.first_use import reaching
from outlast._core.timing.budget import budget_remaining
from outlast.django._commit import MARGIN

__all__ = ["guard_connects"]

#: libpq (and psycopg) never wait less than this for a connect.
_MIN_CONNECT_TIMEOUT = 2


def _connect_timeout(params: dict[str, Any]) -> float:
    try:
        value = float(params.get("connect_timeout") or 0)
    except (TypeError, ValueError):
        return 0.0
    return value


@contextlib.contextmanager
def guard_connects(
    conn: Any,
    faulted: Callable[[], bool],
    armed: list[int],
    guard: Callable[[], Any] | None = None,
) -> Iterator[None]:
    """For one request: connects of `conn` within the budget (see the module docstring).

    `faulted` says whether the request already met a database fault; the
    socket deadlines armed on new connections are appended to `armed`, for
    the caller to disarm when the request ends. `guard` gives the request's
    Guard: a request admitted on first use is admitted by its first connect
    (``ATOMIC_REQUESTS`` connects before the view), refused while the
    breaker is open.
    """
    if "get_new_connection" in vars(conn):
        yield
        return
    original = type(conn).get_new_connection

    def get_new_connection(conn_params: dict[str, Any]) -> Any:
        if guard is not None:
            reaching(guard())
        remaining = budget_remaining()
        if remaining is None:
            return original(conn, conn_params)
        left = remaining - MARGIN
        given = _connect_timeout(conn_params)
        worst = max(given, _MIN_CONNECT_TIMEOUT) if given else math.inf
        if left <= 0 or (faulted() and left < worst):
            raise RequestBudgetExceeded(
                "request budget too short for a new database connection",
                retry_after=1.0,
            )
        # Never wait longer than the budget for a connect (nor forever, when
        # no connect_timeout was set at all).
        limit = max(_MIN_CONNECT_TIMEOUT, math.floor(left))
        if not given or given > limit:
            conn_params = {**conn_params, "connect_timeout": limit}
        raw = original(conn, conn_params)
        fileno = connection_fileno(raw)
        after = budget_remaining()
        if fileno is not None and after is not None:
            armed.append(socket_deadline.arm(fileno, max(after - MARGIN, 0.05)))
        return raw

    conn.get_new_connection = get_new_connection
    try:
        yield
    finally:
        vars(conn).pop("get_new_connection", None)
