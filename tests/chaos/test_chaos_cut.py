"""``cut_after``: the server receives the COMMIT, the client never sees the reply."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import psycopg2
import pytest

import outlast
from outlast.testing._chaos_fixtures import ProxiedServer
from outlast.testing.plugin import PgDatabase


def proxied(pg_proxy: ProxiedServer, db: PgDatabase) -> str:
    return db.dsn(host=pg_proxy.host, port=pg_proxy.port, connect_timeout=10)


def xact_status(db: PgDatabase, xid: Any) -> tuple[str, int]:
    with psycopg.connect(db.dsn(), autocommit=True) as direct:
        row = direct.execute(
            "select pg_xact_status(%s::text::xid8), (select count(*) from t)", (str(xid),)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.fixture
def table(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        conn.execute("create table t (id int)")
    return pg_database


def test_simple_query_commit_is_cut(pg_proxy: ProxiedServer, table: PgDatabase) -> None:
    conn = psycopg2.connect(proxied(pg_proxy, table))
    cur = conn.cursor()
    cur.execute("insert into t values (1)")
    cur.execute("select pg_current_xact_id()")
    xid = cur.fetchone()[0]
    with pg_proxy.fault("cut_after", pattern=r"^\s*commit"):
        with pytest.raises(psycopg2.OperationalError) as info:
            conn.commit()
    conn.close()
    assert xact_status(table, xid) == ("committed", 1)
    fault = outlast.classify(info.value, during_commit=True)
    assert fault is not None and fault.kind == outlast.FaultKind.COMMIT_UNKNOWN


def test_extended_protocol_commit_is_cut(pg_proxy: ProxiedServer, table: PgDatabase) -> None:
    conn = psycopg.connect(proxied(pg_proxy, table))
    conn.execute("insert into t values (1)")
    xid = conn.execute("select pg_current_xact_id()").fetchone()[0]  # type: ignore[index]
    with pg_proxy.fault("cut_after", pattern="COMMIT", count=1) as fid:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("COMMIT")  # Parse/Bind/Execute/Sync
        assert fid not in [f["id"] for f in pg_proxy.faults()]  # count=1 used it up
    conn.close()
    assert xact_status(table, xid) == ("committed", 1)


def test_asyncpg_transaction_commit_is_cut(pg_proxy: ProxiedServer, table: PgDatabase) -> None:
    async def go() -> Any:
        conn = await asyncpg.connect(
            host=pg_proxy.host, port=pg_proxy.port, user="postgres", database=table.name
        )
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("insert into t values (1)")
            xid = await conn.fetchval("select pg_current_xact_id()::text")
            with pytest.raises((asyncpg.ConnectionDoesNotExistError, ConnectionError)):
                with pg_proxy.fault("cut_after", pattern="^COMMIT"):
                    await tx.commit()
            return xid
        finally:
            conn.terminate()

    xid = asyncio.run(go())
    assert xact_status(table, xid) == ("committed", 1)


def test_statements_that_do_not_match_pass(pg_proxy: ProxiedServer, table: PgDatabase) -> None:
    with psycopg.connect(proxied(pg_proxy, table)) as conn:
        with pg_proxy.fault("cut_after", pattern="^COMMIT$"):
            conn.execute("insert into t values (1)")
            assert conn.execute("select 'COMMIT is only text here'").fetchone() is not None
        conn.commit()
    assert xact_status(table, 0)[1] == 1


def test_without_wait_reply_the_client_is_cut_at_once(
    pg_proxy: ProxiedServer, table: PgDatabase
) -> None:
    conn = psycopg2.connect(proxied(pg_proxy, table))
    cur = conn.cursor()
    cur.execute("insert into t values (1)")
    with pg_proxy.fault("cut_after", pattern="commit", wait_reply=False):
        with pytest.raises(psycopg2.OperationalError):
            conn.commit()
    conn.close()
    # the server still got the COMMIT (it may take a moment to finish)
    with psycopg.connect(table.dsn(), autocommit=True) as direct:
        for _ in range(200):
            if direct.execute("select count(*) from t").fetchone() == (1,):
                break
            direct.execute("select pg_sleep(0.05)")
        assert direct.execute("select count(*) from t").fetchone() == (1,)


def _settled_status(db: PgDatabase, xid: Any) -> tuple[str, int]:
    """The xid's status once the server has noticed its client is gone."""
    import time

    deadline = time.monotonic() + 10
    while True:
        status = xact_status(db, xid)
        if status[0] != "in progress" or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_commit_never_forwarded_rolls_back(
    pg_proxy: ProxiedServer, table: PgDatabase, protocol: str
) -> None:
    """``forward=False``: the server never sees the COMMIT, so the transaction aborts."""
    if protocol == "simple":
        conn2 = psycopg2.connect(proxied(pg_proxy, table))
        cur = conn2.cursor()
        cur.execute("insert into t values (1)")
        cur.execute("select pg_current_xact_id()")
        xid = cur.fetchone()[0]
        with pg_proxy.fault("cut_after", pattern=r"^\s*commit", forward=False):
            with pytest.raises(psycopg2.OperationalError) as info:
                conn2.commit()
        conn2.close()
    else:
        conn3 = psycopg.connect(proxied(pg_proxy, table))
        conn3.execute("insert into t values (1)")
        xid = conn3.execute("select pg_current_xact_id()").fetchone()[0]  # type: ignore[index]
        with pg_proxy.fault("cut_after", pattern="COMMIT", forward=False, count=1):
            with pytest.raises(psycopg.OperationalError) as info:  # type: ignore[assignment]
                conn3.execute("COMMIT")  # Parse/Bind/Execute/Sync: none of it forwarded
        conn3.close()
    assert _settled_status(table, xid) == ("aborted", 0)
    fault = outlast.classify(info.value, during_commit=True)
    assert fault is not None and fault.kind == outlast.FaultKind.COMMIT_UNKNOWN


def test_forward_must_be_a_boolean(pg_proxy: ProxiedServer) -> None:
    with pytest.raises(ValueError, match="forward must be true or false"):
        pg_proxy.add_fault("cut_after", pattern="COMMIT", forward="no")
