"""The fault matrix: every network fault and ``cut_after``, seen by four real clients.

Each test is one fault, parametrized over psycopg 3, psycopg2, asyncpg and
``psql`` (a live psql process fed on stdin), all through ``pg_proxy`` in front
of the real server. Drivers are checked with `outlast.classify`; psql with its
exit code and stderr. A hang is shown by a client-side wait expiring, never by
waiting long. ``reject_login`` and ``terminate`` have their own per-client
tests in test_chaos_drivers.py.

======================  ========================================================
fault                   what every client sees
======================  ========================================================
down                    in-flight query: connection lost; new: connection refused
reset                   in-flight query: connection lost; new: reset (see below)
blackhole               new: connect timeout after ~2 s; in-flight query hangs,
                        then connection lost when the fault ends
freeze                  new: connect timeout after ~2 s; in-flight query hangs,
                        then gets its answer when the fault ends
latency                 one round trip + ms per faulted direction (+2 ms for both)
bandwidth               50 kB at 100 kB/s takes ~0.5 s, only in its direction
slow_close              a server-side termination reaches the client delay_ms late
limit_data              counted from the fault's start; past it, connection lost
toxicity                a share of new connections gets the fault, the rest work
cut_after               COMMIT cut: committed on the server, commit-unknown (and
                        psql exit 2) on the client
======================  ========================================================
"""

from __future__ import annotations

import time

import psycopg
import pytest
from pg_clients import (
    CLIENTS,
    assert_fails,
    connect,
    failed_connect,
    in_flight,
    reason_of,
    timed,
)

import outlast
from outlast.testing._chaos_fixtures import ProxiedServer
from outlast.testing.plugin import PgDatabase

LOST = "connection_lost"
PSQL_LOST = "server closed the connection unexpectedly"
# An RST right after accept reaches libpq while it reads or while it writes the
# startup packet; asyncio reports it from its connect step ("[Errno 104] Connect
# call failed"), which classify reads as a refused connection, or, when the
# handshake won the race, from the first read. Both are UNAVAILABLE at connect.
RESET_NEW = {"psycopg": LOST, "psycopg2": LOST, "asyncpg": {LOST, "connection_refused"}}
PSQL_RESET = "Connection reset by peer|server closed the connection unexpectedly"


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def works(client: str, proxy: ProxiedServer) -> None:
    with connect(client, proxy) as session:
        assert session.value("select 40 + 2") == "42"


def test_down(pg_proxy: ProxiedServer, client: str) -> None:
    with connect(client, pg_proxy) as live:
        pending, _ = in_flight(pg_proxy, live, f"down-{client}", 1)
        with pg_proxy.fault("down"):
            assert_fails(client, pending.failure(10), reason=LOST, psql=PSQL_LOST)
            exc = failed_connect(client, pg_proxy)
            assert_fails(client, exc, reason="connection_refused", psql="Connection refused")
    works(client, pg_proxy)


def test_reset(pg_proxy: ProxiedServer, client: str) -> None:
    with connect(client, pg_proxy) as live:
        pending, _ = in_flight(pg_proxy, live, f"reset-{client}", 1)
        with pg_proxy.fault("reset"):
            assert_fails(client, pending.failure(10), reason=LOST, psql=PSQL_RESET)
            exc = failed_connect(client, pg_proxy)
            assert_fails(client, exc, reason=RESET_NEW.get(client, ""), psql=PSQL_RESET)
            fault = outlast.classify(exc)
            if client != "psql":
                assert fault is not None and fault.phase == "connect"
    works(client, pg_proxy)


@pytest.mark.parametrize("kind", ["blackhole", "freeze"])
def test_blackhole_and_freeze_hang(pg_proxy: ProxiedServer, client: str, kind: str) -> None:
    with connect(client, pg_proxy) as live:
        pending, _ = in_flight(pg_proxy, live, f"{kind}-{client}", 0.5)
        with pg_proxy.fault(kind):
            exc, elapsed = timed(lambda: failed_connect(client, pg_proxy, timeout=2))
            assert 1.5 <= elapsed < 4, elapsed  # "about 2 s", with a margin for a loaded CI
            assert_fails(client, exc, reason="connect_timeout", psql="timeout expired")
            # The live query's answer came 0.5 s in; 2 s later it still has not arrived.
            assert not pending.wait(0.1)
        if kind == "freeze":  # held, not lost: the answer arrives and the session goes on
            assert pending.outcome(10) == f"{kind}-{client}"
            assert live.value("select 7") == "7"
        else:  # swallowed: the stream cannot continue, the connection is closed
            assert_fails(client, pending.failure(10), reason=LOST, psql=PSQL_LOST)
    works(client, pg_proxy)


def test_latency_per_direction(pg_proxy: ProxiedServer, client: str) -> None:
    with connect(client, pg_proxy) as session:
        for _ in range(3):  # warm: asyncpg prepares on first use, caches afterwards
            session.value("select 1")
        for direction, trips in (("upstream", 1), ("downstream", 1), ("both", 2)):
            with pg_proxy.fault("latency", ms=100, direction=direction):
                value, elapsed = timed(lambda: session.value("select 1"))
            assert value == "1"
            assert 0.095 * trips <= elapsed < 0.1 * trips + 0.25, (direction, elapsed)
        _, elapsed = timed(lambda: session.value("select 1"))
        assert elapsed < 0.09  # gone with the fault


def test_latency_jitter_spreads_round_trips(pg_proxy: ProxiedServer, client: str) -> None:
    with connect(client, pg_proxy) as session:
        session.value("select 1")
        session.value("select 1")
        with pg_proxy.fault("latency", ms=60, jitter_ms=50, direction="downstream"):
            times = [timed(lambda: session.value("select 1"))[1] for _ in range(12)]
    assert all(0.0095 <= t < 0.11 + 0.2 for t in times), times
    assert max(times) - min(times) > 0.02, times  # spread, not a constant delay


def test_upstream_latency_does_not_delay_a_server_push(pg_proxy: ProxiedServer) -> None:
    # A NOTIFY is a push: it only travels downstream.
    with psycopg.connect(pg_proxy.dsn(), autocommit=True) as listener:
        listener.execute("listen matrix_push")
        with psycopg.connect(pg_proxy.server.dsn(), autocommit=True) as direct:
            for direction, low, high in (("upstream", 0.0, 0.15), ("downstream", 0.19, 0.6)):
                with pg_proxy.fault("latency", ms=200, direction=direction):
                    direct.execute("notify matrix_push, 'x'")
                    started = time.monotonic()
                    got = list(listener.notifies(timeout=3, stop_after=1))
                    elapsed = time.monotonic() - started
                assert [n.payload for n in got] == ["x"]
                assert low <= elapsed < high, (direction, elapsed)


def test_bandwidth_per_direction(pg_proxy: ProxiedServer, client: str) -> None:
    big_query = f"select length('{'q' * 50_000}')"
    big_result = "select repeat('x', 50000)"
    with connect(client, pg_proxy) as session:
        session.value(big_query)  # warm
        with pg_proxy.fault("bandwidth", kbps=100, direction="downstream"):
            result, slow = timed(lambda: session.value(big_result))
            count, fast = timed(lambda: session.value(big_query))
        assert result == "x" * 50_000 and count == "50000"
        assert 0.45 <= slow < 1.3 and fast < 0.3, (slow, fast)
        with pg_proxy.fault("bandwidth", kbps=100, direction="upstream"):
            count, slow = timed(lambda: session.value(big_query))
            result, fast = timed(lambda: session.value(big_result))
        assert result == "x" * 50_000 and count == "50000"
        assert 0.45 <= slow < 1.3 and fast < 0.3, (slow, fast)


SLOW_CLOSE = {"psycopg": "admin_shutdown", "psycopg2": LOST, "asyncpg": "admin_shutdown"}


def test_slow_close_delays_the_end_of_a_terminated_session(
    pg_proxy: ProxiedServer, client: str
) -> None:
    with connect(client, pg_proxy) as live, pg_proxy.fault("slow_close", delay_ms=600):
        pending, pid = in_flight(pg_proxy, live, f"slow-close-{client}", 30)
        with psycopg.connect(pg_proxy.server.dsn(), autocommit=True) as direct:
            direct.execute("select pg_terminate_backend(%s)", (pid,))
            terminated = time.monotonic()
        exc = pending.failure(10)
        assert pending.finished_at is not None
        elapsed = pending.finished_at - terminated
        # The FATAL message travels at once; the close behind it waits 600 ms.
        assert 0.55 <= elapsed < 0.6 + 1.0, elapsed
        assert_fails(
            client,
            exc,
            reason=SLOW_CLOSE.get(client, ""),
            psql="FATAL:  terminating connection due to administrator command",
        )


def test_limit_data_counts_from_the_fault(pg_proxy: ProxiedServer, client: str) -> None:
    with connect(client, pg_proxy) as session:
        session.value("select 1")
        with pg_proxy.fault("limit_data", bytes=5000):
            assert session.value("select repeat('x', 4000)") == "x" * 4000  # under the limit
            with pytest.raises(Exception) as info:
                session.value("select repeat('y', 100000)")
    assert_fails(client, info.value, reason=LOST, psql=PSQL_LOST)


def test_toxicity(pg_proxy: ProxiedServer, client: str) -> None:
    failures: list[BaseException] = []
    with pg_proxy.fault("reset", toxicity=0.5):
        for _ in range(20):
            try:
                works(client, pg_proxy)
            except Exception as exc:
                failures.append(exc)
    assert 0 < len(failures) < 20  # all-or-nothing has odds of 2 in a million
    for exc in failures:
        assert_fails(client, exc, reason=RESET_NEW.get(client, ""), psql=PSQL_RESET)
    with pg_proxy.fault("reset", toxicity=0.0):
        for _ in range(3):
            works(client, pg_proxy)


@pytest.fixture
def table(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        conn.execute("create table t (id int)")
    return pg_database


def test_cut_after_commit(pg_proxy: ProxiedServer, client: str, table: PgDatabase) -> None:
    with connect(client, pg_proxy, dbname=table.name) as session:
        session.execute("begin")
        session.execute("insert into t values (1)")
        xid = session.value("select pg_current_xact_id()")
        with pg_proxy.fault("cut_after", pattern=r"^\s*commit"):
            with pytest.raises(Exception) as info:
                session.execute("commit")
    assert_fails(client, info.value, reason=LOST, psql=PSQL_LOST)
    if client != "psql":
        fault = outlast.classify(info.value, during_commit=True)
        assert fault is not None and fault.kind == outlast.FaultKind.COMMIT_UNKNOWN
        assert reason_of(info.value) == LOST
    with psycopg.connect(table.dsn(), autocommit=True) as direct:
        row = direct.execute(
            "select pg_xact_status(%s::xid8), (select count(*) from t)", (xid,)
        ).fetchone()
    assert row == ("committed", 1)
