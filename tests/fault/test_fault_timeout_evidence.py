"""Which client-side timeouts are evidence of an outage, end to end through the chaos proxy.

Only an answer from the server is evidence that it is up. Of the timeouts
that fire on the client:

- the preset's own client statement timeout (``statement_timeout`` + grace:
  asyncpg's ``command_timeout``, the socket deadline of the SQLAlchemy and
  psycopg integrations) means the server could not even cancel the statement
  itself: UNAVAILABLE ``server_unresponsive``, counted by the breaker;
- a timeout the application chose (asyncpg ``timeout=``, its own
  ``command_timeout``) or the request's budget says nothing about the server
  (a slow query hits it too): ``client_timeout`` / ``request_budget_exceeded``,
  never a success, never a failure -- and the database stays *unanswered*
  (`DatabaseState.unanswered_since`) until the server answers again, so a
  health answer built from the Guard's state is a 503 meanwhile.

A frozen link (``freeze``: the TCP connection stays open, nothing is
forwarded) is the outage neither TCP keepalives nor ``tcp_user_timeout`` see.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import asyncpg
import psycopg
import pytest
import sqlalchemy as sa

import outlast
import outlast.asyncpg
import outlast.psycopg
import outlast.sqlalchemy
from outlast import FaultKind
from outlast._core.connections.hardening import PRESETS
from outlast._core.timing.budget import RequestBudget
from outlast._core.web.health import health_db

# command_timeout / the client statement deadline: 0.5 s + 0.5 s.
PRESET = PRESETS["default"].replace(statement_timeout=0.5, deadline_grace=0.5)


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def __call__(self, event: object) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


def _guard(name: str) -> tuple[outlast.Guard, Recorder]:
    recorder = Recorder()
    guard = outlast.Guard(
        name,
        retry=outlast.Retry(attempts=1),
        breaker=outlast.Breaker(failure_threshold=1, open_for=0.3, max_open_for=0.3),
        listeners=[recorder],
    )
    return guard, recorder


def _reason(guard: outlast.Guard, exc: BaseException) -> tuple[FaultKind, str]:
    fault = guard.classify(exc)
    assert fault is not None, repr(exc)
    return fault.kind, fault.reason


def _health_status(guard: outlast.Guard) -> tuple[int, dict[str, Any]]:
    status, doc, _ = health_db(guard, None)  # no ping: the Guard's state
    return status, json.loads(json.dumps(doc))


async def _open_breaker(guard: outlast.Guard, pg_proxy: Any, url: str) -> None:
    """A real refused login opens the breaker (threshold 1), then wait until half-open.

    (``reject_login`` leaves the live connections alone; ``down`` would drop them.)
    """
    with (
        pg_proxy.fault("reject_login", preset="too_many_connections"),
        pytest.raises(asyncpg.TooManyConnectionsError),
    ):
        await outlast.asyncpg.connect(url, guard=guard, preset=PRESET)
    assert guard.breaker_state == "open"
    await asyncio.sleep(0.35)
    assert guard.breaker_state == "half_open"


async def test_asyncpg_a_probe_that_times_out_never_closes_the_breaker(
    pg_proxy: Any, pg_database: Any
) -> None:
    guard, recorder = _guard("asyncpg-probe")
    url = pg_proxy.url(pg_database.name, driver=None)
    conn = await outlast.asyncpg.connect(url, guard=guard, preset=PRESET)
    # asyncpg gives a connection up after a timeout it could not cancel: one each.
    other = await outlast.asyncpg.connect(url, guard=guard, preset=PRESET)
    try:
        await _open_breaker(guard, pg_proxy, url)
        with pg_proxy.fault("freeze"):
            # The half-open probe with the caller's own short timeout: no answer.
            probe = functools.partial(conn.fetchval, "SELECT 1", timeout=0.2)
            with pytest.raises(TimeoutError) as info:
                await guard.acall(probe, idempotent=True)
            assert _reason(guard, info.value) == (FaultKind.TIMEOUT, "client_timeout")
            assert guard.breaker_state == "half_open"  # not closed: no answer
            assert "BreakerClosed" not in recorder.names()
            assert "DatabaseRecovered" not in recorder.names()
            assert guard.state.down
            # The next probe runs into the preset's command_timeout (1 s): the
            # server did not even cancel it. That is an outage: open again.
            with pytest.raises(outlast.DatabaseUnavailable) as refused:
                await guard.acall(other.fetchval, "SELECT 1", idempotent=True)
            fault = refused.value.fault
            assert fault is not None
            assert (fault.kind, fault.reason) == (FaultKind.UNAVAILABLE, "server_unresponsive")
            assert isinstance(refused.value.__cause__, TimeoutError)
            assert guard.breaker_state == "open"
        await asyncio.sleep(0.35)
        fresh = await outlast.asyncpg.connect(url, guard=guard, preset=PRESET)
        try:
            assert await guard.acall(fresh.fetchval, "SELECT 1") == 1  # it answers: closed
        finally:
            await fresh.close()
        assert guard.breaker_state == "closed" and guard.state.up
    finally:
        conn.terminate()
        other.terminate()


LINK_FAULTS = pytest.mark.parametrize("link", ["freeze", "blackhole"])


@LINK_FAULTS
async def test_asyncpg_pool_frozen_link_is_an_outage_a_slow_query_is_not(
    pg_proxy: Any, pg_database: Any, link: str
) -> None:
    guard, recorder = _guard("asyncpg-pool")
    url = pg_proxy.url(pg_database.name, driver=None)
    async with outlast.asyncpg.create_pool(
        url, guard=guard, preset=PRESET, min_size=1, max_size=1
    ) as pool:
        async with pool.acquire() as conn:
            # A slow query and the caller's short timeout: the server is fine.
            slow = functools.partial(conn.fetchval, "SELECT pg_sleep(0.4)", timeout=0.1)
            with pytest.raises(TimeoutError) as info:
                await guard.acall(slow)
            assert _reason(guard, info.value) == (FaultKind.TIMEOUT, "client_timeout")
            assert guard.state.up and guard.breaker_state == "closed"
            assert guard.state.unanswered_since is not None
            status, doc = _health_status(guard)
            assert status == 503, doc  # silence is not health
            assert await guard.acall(conn.fetchval, "SELECT 1") == 1
            assert guard.state.answering
            assert _health_status(guard)[0] == 200
            with pg_proxy.fault(link), pytest.raises(TimeoutError) as info:
                await guard.acall(conn.fetchval, "SELECT 1")
            assert _reason(guard, info.value) == (FaultKind.UNAVAILABLE, "server_unresponsive")
        assert guard.state.down and guard.breaker_state == "open"
        assert "DatabaseDown" in recorder.names()


@LINK_FAULTS
async def test_sqlalchemy_asyncpg_frozen_link_and_a_caller_timeout(
    pg_proxy: Any, pg_database: Any, link: str
) -> None:
    guard, _ = _guard("sa-asyncpg")
    engine = outlast.sqlalchemy.create_async_engine(
        pg_proxy.url(pg_database.name, driver="asyncpg"), guard=guard, preset=PRESET
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            with pg_proxy.fault(link), pytest.raises(Exception) as info:  # noqa: PT011
                await guard.acall(conn.execute, sa.text("SELECT 1"))
        assert _reason(guard, info.value) == (FaultKind.UNAVAILABLE, "server_unresponsive")
        assert guard.state.down
    finally:
        await engine.dispose()

    # The caller's own command_timeout, shorter than the preset's: a slow query.
    guard2, _ = _guard("sa-asyncpg-own")
    engine2 = outlast.sqlalchemy.create_async_engine(
        pg_proxy.url(pg_database.name, driver="asyncpg"),
        guard=guard2,
        preset=PRESET,
        connect_args={"command_timeout": 0.1},
    )
    try:
        async with engine2.connect() as conn:
            with pytest.raises(TimeoutError) as info:
                await guard2.acall(conn.execute, sa.text("SELECT pg_sleep(0.4)"))
        assert _reason(guard2, info.value) == (FaultKind.TIMEOUT, "client_timeout")
        assert guard2.state.up and guard2.breaker_state == "closed"
        assert not guard2.state.answering
    finally:
        await engine2.dispose()


@LINK_FAULTS
def test_psycopg_frozen_link_and_the_request_budget(
    pg_proxy: Any, pg_database: Any, link: str
) -> None:
    guard, _ = _guard("psycopg")
    with outlast.psycopg.ConnectionPool(
        pg_proxy.dsn(pg_database.name), guard=guard, preset=PRESET, min_size=1, max_size=1
    ) as pool:
        # The request's budget runs out first (0.3 s < 1 s): its timeout, not an outage.
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            token = RequestBudget(0.3).start()
            try:
                with pg_proxy.fault(link), pytest.raises(psycopg.OperationalError) as info:
                    guard.call(conn.execute, "SELECT 1")
            finally:
                RequestBudget.finish(token)
        assert _reason(guard, info.value) == (FaultKind.TIMEOUT, "request_budget_exceeded")
        assert guard.state.up and guard.breaker_state == "closed"
        assert _health_status(guard)[0] == 503  # and nobody answered since
        # Without a budget the preset's own deadline fires: the server is silent.
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            assert guard.state.answering
            with pg_proxy.fault(link), pytest.raises(psycopg.OperationalError) as info:
                guard.call(conn.execute, "SELECT 1")
        assert _reason(guard, info.value) == (FaultKind.UNAVAILABLE, "server_unresponsive")
        assert guard.state.down and guard.breaker_state == "open"


async def test_a_lost_commit_under_the_preset_deadline_is_commit_unknown(
    pg_proxy: Any, pg_database: Any
) -> None:
    """No answer to COMMIT within the preset's timeout: it may have happened."""
    conn = await outlast.asyncpg.connect(pg_proxy.url(pg_database.name, driver=None), preset=PRESET)
    try:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TEMP TABLE t (x int)")
        with pg_proxy.fault("freeze"), pytest.raises(TimeoutError) as info:
            await conn.execute("COMMIT")
    finally:
        conn.terminate()
    fault = outlast.classify(info.value, during_commit=True)
    assert fault is not None
    assert (fault.kind, fault.phase) == (FaultKind.COMMIT_UNKNOWN, "commit")


def test_asyncpg_query_timeout_without_outlast_says_nothing(pg_database: Any) -> None:
    """A plain asyncpg command_timeout is the application's own: no evidence either way."""

    async def run() -> BaseException:
        conn = await asyncpg.connect(
            pg_database.server.url(pg_database.name, driver=None), command_timeout=0.1
        )
        try:
            await conn.fetchval("SELECT pg_sleep(0.4)")
        except TimeoutError as exc:
            return exc
        finally:
            await conn.close()
        raise AssertionError("no timeout")

    guard, _ = _guard("plain")
    exc = asyncio.run(run())
    fault = guard.classify(exc)
    assert fault is not None and fault.reason == "client_timeout"
    assert guard.evidence(fault) is None
