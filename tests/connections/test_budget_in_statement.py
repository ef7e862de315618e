"""A request budget that runs out inside a statement is the request's timeout, not an outage.

On a frozen link (the proxy accepts bytes and answers nothing) the socket
deadline that fires first is the request's budget, not the preset's statement
timeout. The driver then reports a lost connection; outlast must say what
really happened: the request ran out of time. The Guard counts nothing, the
breaker stays closed, and the error classifies as TIMEOUT
``request_budget_exceeded`` -- for every libpq-based client style.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import outlast
from outlast._core.timing.budget import RequestBudget

# The preset's own client-side timeout (31 s) is far longer than the budget.
PRESET = outlast.Hardening(statement_timeout=30.0, deadline_grace=1.0)
BUDGET = 1.0


@contextlib.contextmanager
def _request(seconds: float) -> Iterator[None]:
    budget = RequestBudget(seconds)
    token = budget.start()
    try:
        yield
    finally:
        budget.finish(token)


# Each client style: a context manager that checks a connection out of the
# pool (before the link freezes) and yields a function that runs one statement.
Client = Callable[[Any, Any, outlast.Guard], tuple[Callable[[], Any], Callable[[], None]]]


def _psycopg(
    proxy: Any, db: Any, guard: outlast.Guard
) -> tuple[Callable[[], Any], Callable[[], None]]:
    from outlast.psycopg import ConnectionPool

    pool = ConnectionPool(
        proxy.dsn(db.name), guard=guard, preset=PRESET, min_size=1, max_size=1, open=True
    )

    @contextlib.contextmanager
    def checked_out() -> Iterator[Callable[[], object]]:
        with pool.connection() as conn:
            yield lambda: conn.execute("SELECT 1")

    return checked_out, pool.close


def _psycopg2(
    proxy: Any, db: Any, guard: outlast.Guard
) -> tuple[Callable[[], Any], Callable[[], None]]:
    from outlast.psycopg2 import ConnectionPool

    pool = ConnectionPool(proxy.dsn(db.name), guard=guard, preset=PRESET, max_size=1)

    @contextlib.contextmanager
    def checked_out() -> Iterator[Callable[[], object]]:
        with pool.connection() as conn, conn.cursor() as cur:
            yield lambda: cur.execute("SELECT 1")

    return checked_out, pool.close


def _sqlalchemy(
    proxy: Any, db: Any, guard: outlast.Guard
) -> tuple[Callable[[], Any], Callable[[], None]]:
    import sqlalchemy as sa

    from outlast.sqlalchemy import create_engine

    engine = create_engine(proxy.url(db.name, driver="psycopg"), guard=guard, preset=PRESET)

    @contextlib.contextmanager
    def checked_out() -> Iterator[Callable[[], object]]:
        with engine.connect() as conn:
            yield lambda: conn.execute(sa.text("SELECT 1"))

    return checked_out, engine.dispose


CLIENTS: dict[str, Client] = {"psycopg": _psycopg, "psycopg2": _psycopg2, "sqlalchemy": _sqlalchemy}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_budget_that_runs_out_inside_a_statement_is_not_an_outage(
    pg_proxy: Any, pg_database: Any, client: str
) -> None:
    events: list[outlast.Event] = []
    guard = outlast.Guard(f"budget-{client}", listeners=[events.append])
    checked_out, close = CLIENTS[client](pg_proxy, pg_database, guard)
    try:
        with contextlib.ExitStack() as stack:
            statement = stack.enter_context(checked_out())
            statement()
            pg_proxy.add_fault("freeze")  # now the link answers nothing
            start = time.monotonic()
            try:
                with _request(BUDGET), pytest.raises(Exception) as info:  # noqa: PT011
                    statement()
            finally:
                elapsed = time.monotonic() - start
                pg_proxy.clear()
            with contextlib.suppress(Exception):
                stack.close()  # giving back a dead connection may fail: not the point here
        fault = outlast.classify(info.value)
        assert fault is not None, info.value
        assert (fault.kind, fault.reason) == (outlast.FaultKind.TIMEOUT, "request_budget_exceeded")
        assert fault == guard.classify(info.value)
        assert elapsed < PRESET.client_statement_timeout  # the budget fired, not the preset
        state = guard.state
        assert state.up and state.last_fault is None, state
        assert guard.breaker_state == "closed"
        assert not [e for e in events if isinstance(e, outlast.DatabaseDown)]
        with checked_out() as statement:  # the link is back: a fresh connection serves
            statement()
    finally:
        close()


def test_the_preset_s_own_timeout_on_a_frozen_link_is_still_an_outage(
    pg_proxy: Any, pg_database: Any
) -> None:
    """Outside a request the socket deadline is the preset's: a dead link is a lost connection."""
    preset = outlast.Hardening(statement_timeout=0.5, deadline_grace=0.5)
    from outlast.psycopg import ConnectionPool

    guard = outlast.Guard("preset-frozen", listeners=())
    pool = ConnectionPool(
        pg_proxy.dsn(pg_database.name),
        guard=guard,
        preset=preset,
        min_size=1,
        max_size=1,
        open=True,
    )
    try:
        with contextlib.suppress(Exception), pool.connection() as conn:
            pg_proxy.add_fault("freeze")
            try:
                with pytest.raises(Exception) as info:  # noqa: PT011 - classified below
                    conn.execute("SELECT 1")
            finally:
                pg_proxy.clear()
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE, fault
        assert not guard.state.up
    finally:
        pool.close()
