"""A remote server behind postgres_fdw or dblink fails: not this database's outage.

The embedded server ships both extensions. The "remote" is the same embedded
server reached through the chaos proxy, so the proxy can take it down (refuse,
reset, terminate mid-query) while the client's own connection goes straight
to the server and stays healthy. PostgreSQL then answers the client's
statement with ERROR 08001 ("could not connect to server") or 08006 (the
remote died mid-query): the statement *was* sent, this database answered, and
only the remote is down. So the fault is UNAVAILABLE ``remote_unavailable``
with phase ``statement``: transient (the remote may come back), never retried
for non-idempotent work, never counted against this database's breaker, and
never a reason to throw this database's pooled connections away.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from fault_kit import DRIVERS, classify_real, connect_and_query
from sqlalchemy import text

import outlast
import outlast.sqlalchemy
from outlast import FaultKind


@pytest.fixture
def remote(pg_database: Any, pg_proxy: Any) -> Iterator[Any]:
    """``ft`` (a postgres_fdw foreign table) and dblink, both to the server through the proxy."""
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION postgres_fdw")
        conn.execute("CREATE EXTENSION dblink")
        conn.execute(
            "CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw OPTIONS "
            f"(host '127.0.0.1', port '{pg_proxy.port}', dbname '{pg_database.name}',"
            " connect_timeout '3')"
        )
        conn.execute("CREATE USER MAPPING FOR postgres SERVER remote OPTIONS (user 'postgres')")
        conn.execute("CREATE TABLE remote_rows (id int)")
        conn.execute("INSERT INTO remote_rows VALUES (1)")
        conn.execute(
            "CREATE FOREIGN TABLE ft (id int) SERVER remote OPTIONS (table_name 'remote_rows')"
        )
        conn.execute("CREATE VIEW slow_rows AS SELECT pg_sleep(5)::text AS x")
        conn.execute(
            "CREATE FOREIGN TABLE slow_ft (x text) SERVER remote OPTIONS (table_name 'slow_rows')"
        )
        conn.execute("CREATE TABLE local_writes (id serial PRIMARY KEY, note text)")
    yield pg_database


def dblink_sql(pg_proxy: Any, db: Any, remote_sql: str = "SELECT 1") -> str:
    conninfo = (
        f"host=127.0.0.1 port={pg_proxy.port} dbname={db.name} user=postgres connect_timeout=3"
    )
    return f"SELECT * FROM dblink('{conninfo}', '{remote_sql}') AS t(x text)"


STATEMENTS = {
    "postgres_fdw": lambda proxy, db: "SELECT count(*) FROM ft",
    "dblink": dblink_sql,
}


def _assert_remote(fault: outlast.Fault, sqlstate: str) -> None:
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.UNAVAILABLE,
        "remote_unavailable",
        "statement",
    )
    assert fault.sqlstate == sqlstate
    assert fault.transient and not fault.before_statement


@pytest.mark.parametrize("via", sorted(STATEMENTS))
@pytest.mark.parametrize("driver", DRIVERS)
def test_remote_down_is_a_remote_fault_raised_by_a_statement(
    remote: Any, pg_proxy: Any, driver: str, via: str
) -> None:
    sql = STATEMENTS[via](pg_proxy, remote)
    server = remote.server
    with pg_proxy.fault("down"):
        fault, _ = classify_real(
            lambda: connect_and_query(
                driver, server.host, server.port, dbname=remote.name, steps=[sql]
            )
        )
    _assert_remote(fault, "08001")


@pytest.mark.parametrize("fault_kind", ["terminate", "reset"])
@pytest.mark.parametrize("via", sorted(STATEMENTS))
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_remote_lost_mid_query(
    remote: Any, pg_proxy: Any, driver: str, via: str, fault_kind: str
) -> None:
    if via == "dblink":
        sql = dblink_sql(pg_proxy, remote, "SELECT pg_sleep(5)::text")
    else:
        sql = "SELECT * FROM slow_ft"
    server = remote.server
    # Strike once the remote statement is running (bounded wait for it).
    striker = threading.Thread(target=_strike_when_remote_runs, args=(remote, pg_proxy, fault_kind))
    striker.start()
    try:
        fault, _ = classify_real(
            lambda: connect_and_query(
                driver, server.host, server.port, dbname=remote.name, steps=[sql]
            )
        )
    finally:
        striker.join(30)
    _assert_remote(fault, "08006")


def _strike_when_remote_runs(db: Any, proxy: Any, kind: str) -> None:
    deadline = time.monotonic() + 20
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            # Only the remote side's session sleeps; the client's waits on it.
            row = conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep'"
            ).fetchone()
            if row is not None:
                break
            time.sleep(0.05)
    proxy.add_fault(kind)


def _write_then_ask_remote(conn: psycopg.Connection[Any], sql: str) -> None:
    """A non-idempotent unit: an autocommitted write, then a statement through the remote."""
    conn.execute("INSERT INTO local_writes (note) VALUES ('once')")
    conn.execute(sql)


@pytest.mark.parametrize("via", sorted(STATEMENTS))
def test_a_non_idempotent_call_is_not_repeated_and_the_breaker_stays_closed(
    remote: Any, pg_proxy: Any, via: str, caplog: pytest.LogCaptureFixture
) -> None:
    guard = outlast.Guard("foreign", breaker=outlast.Breaker(failure_threshold=2))
    sql = STATEMENTS[via](pg_proxy, remote)
    with psycopg.connect(remote.dsn(), autocommit=True) as conn, pg_proxy.fault("down"):
        for _ in range(3):
            with pytest.raises(psycopg.OperationalError) as raised:
                guard.call(_write_then_ask_remote, conn, sql)  # idempotent=False
            assert guard.classify(raised.value).reason == "remote_unavailable"  # type: ignore[union-attr]
        written = conn.execute("SELECT count(*) FROM local_writes").fetchone()
        # This database answered every time: still usable, still closed.
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert written == (3,)  # one write per call: never retried as "never sent"
    assert guard.breaker_state == "closed"
    assert guard.state.up and guard.state.outages == 0
    assert not [r for r in caplog.records if "[DB_DOWN]" in r.getMessage()]


def test_a_transaction_is_retried_whole_and_leaves_nothing_behind(
    remote: Any, pg_proxy: Any
) -> None:
    """Guard.transaction re-runs the whole transaction (rolled back each time), never counts it."""
    guard = outlast.Guard(
        "foreign-tx",
        retry=outlast.Retry(attempts=3, backoff=outlast.Backoff(initial=0.01, cap=0.02)),
        breaker=outlast.Breaker(failure_threshold=2),
    )
    engine = outlast.sqlalchemy.create_engine(remote.url(), guard=guard)
    runs: list[int] = []
    sql = dblink_sql(pg_proxy, remote)

    def write(conn: Any) -> None:
        runs.append(1)
        conn.execute(text("INSERT INTO local_writes (note) VALUES ('tx')"))
        conn.execute(text(sql))

    try:
        with pg_proxy.fault("down"), pytest.raises(outlast.DatabaseUnavailable) as raised:
            guard.transaction(engine, write)
        assert guard.classify(raised.value).reason == "remote_unavailable"  # type: ignore[union-attr]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM local_writes")).scalar() == 0
    finally:
        engine.dispose()
    assert len(runs) == 3  # the remote may come back: the whole unit is tried again
    assert guard.breaker_state == "closed" and guard.state.up


def test_the_hardened_engine_keeps_its_connection(remote: Any, pg_proxy: Any) -> None:
    """A remote failure is no reason to invalidate this database's pool."""
    guard = outlast.Guard("foreign-pool")
    engine = outlast.sqlalchemy.create_engine(remote.url(), guard=guard, pool_size=1)
    try:
        with engine.connect() as conn:
            before = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with pg_proxy.fault("down"), engine.connect() as conn:
            with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
                conn.execute(text("SELECT count(*) FROM ft"))
            assert guard.classify(raised.value).reason == "remote_unavailable"  # type: ignore[union-attr]
        with engine.connect() as conn:
            after = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    finally:
        engine.dispose()
    assert after == before
    assert guard.state.up and guard.breaker_state == "closed"


def test_asyncpg_pool_keeps_its_connections(remote: Any, pg_proxy: Any) -> None:
    import outlast.asyncpg

    guard = outlast.Guard("foreign-apool")

    async def run() -> tuple[int, int, str]:
        pool = await outlast.asyncpg.create_pool(
            remote.server.url(remote.name, driver=None), guard=guard, min_size=1, max_size=1
        )
        try:
            before = await pool.fetchval("SELECT pg_backend_pid()")
            with pg_proxy.fault("down"):
                try:
                    await pool.fetch("SELECT count(*) FROM ft")
                except Exception as exc:  # the remote's failure
                    reason = guard.classify(exc).reason  # type: ignore[union-attr]
            await asyncio.sleep(0.1)  # let the query logger run
            after = await pool.fetchval("SELECT pg_backend_pid()")
        finally:
            await pool.close()
        return before, after, reason

    before, after, reason = asyncio.run(run())
    assert reason == "remote_unavailable"
    assert after == before
    assert guard.state.up and guard.breaker_state == "closed"
