"""1,000 transactions through the chaos proxy with faults at random points.

Afterwards every acknowledged write is present exactly once, nothing was
written twice (the table has no UNIQUE constraint), every lost COMMIT was
resolved or reported as `CommitOutcomeUnknown`. Printed counts go to the
report (``pytest -s``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from ledger_kit import (
    COMMIT_CUT_TOXICITY,
    CUT_COMMIT,
    AsyncFaultyAdapter,
    FaultyAdapter,
    Ledger,
    check_ledger,
)

import outlast
from outlast.chaos import Proxy
from outlast.testing.plugin import PgDatabase

N = int(os.environ.get("OUTLAST_LEDGER_N", "1000"))
SEED = 20240505

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def ledger_db(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        # Deliberately no PRIMARY KEY / UNIQUE: a double write must show up.
        conn.execute("CREATE TABLE ledger (id bigint NOT NULL, attempt int NOT NULL)")
    return pg_database


@pytest.fixture
def proxy(pg_server: Any) -> Iterator[Proxy]:
    with Proxy(upstream=(pg_server.host, pg_server.port)) as p:
        yield p


def _guard() -> outlast.Guard:
    return outlast.Guard(
        "ledger",
        retry=outlast.Retry(
            attempts=10, deadline=30.0, backoff=outlast.Backoff(initial=0.005, cap=0.2)
        ),
        breaker=outlast.Breaker(enabled=False),
        listeners=(),
    )


def _rows(db: PgDatabase) -> dict[int, int]:
    with psycopg.connect(db.dsn()) as conn:
        return dict(conn.execute("SELECT id, count(*) FROM ledger GROUP BY id").fetchall())


def _report(name: str, ledger: Ledger, rows: dict[int, int]) -> None:
    counts = ledger.counts()
    print(
        f"\n[ledger {name}] n={len(ledger.outcome)} ok={counts['ok']}"
        f" unknown={counts['unknown']} failed={counts['failed']}"
        f" resolved-committed={ledger.statuses['committed']}"
        f" resolved-aborted={ledger.statuses['aborted'] + ledger.statuses['unassigned']}"
        f" in-progress-answers={ledger.statuses['in progress']}"
        f" injected={dict(ledger.injected)} rows={sum(rows.values())}"
    )


def _run_sync(guard: outlast.Guard, adapter: FaultyAdapter, ledger: Ledger, insert: Any) -> None:
    from outlast._transaction import run_transaction

    for i in range(N):
        adapter.choose()
        attempt = [0]
        try:
            run_transaction(guard, adapter, insert, i, attempt)
            ledger.outcome[i] = "ok"
        except outlast.CommitOutcomeUnknown:
            ledger.outcome[i] = "unknown"
        except outlast.DatabaseUnavailable:
            ledger.outcome[i] = "failed"


def _assert_exercised(ledger: Ledger) -> None:
    counts = ledger.counts()
    assert counts["ok"] >= N * 0.95
    # Both resolutions really happened through the real server.
    assert ledger.statuses["committed"] >= max(1, N // 100)
    assert ledger.statuses["aborted"] + ledger.statuses["unassigned"] >= max(1, N // 200)


def test_ledger_psycopg_pool_survives_lost_commits(ledger_db: PgDatabase, proxy: Proxy) -> None:
    from psycopg_pool import ConnectionPool

    from outlast.psycopg._transaction import PsycopgAdapter

    ledger = Ledger()
    dsn = ledger_db.dsn(host=proxy.host, port=proxy.port, connect_timeout=5)
    proxy.add_fault("cut_after", toxicity=COMMIT_CUT_TOXICITY, pattern=CUT_COMMIT)

    def insert(conn: psycopg.Connection[Any], i: int, attempt: list[int]) -> int:
        attempt[0] += 1
        conn.execute("INSERT INTO ledger (id, attempt) VALUES (%s, %s)", (i, attempt[0]))
        return i

    with ConnectionPool(dsn, min_size=1, max_size=1, open=True, timeout=30) as pool:
        adapter = FaultyAdapter(PsycopgAdapter(pool), proxy, random.Random(SEED), ledger)
        _run_sync(_guard(), adapter, ledger, insert)
    proxy.clear()
    rows = _rows(ledger_db)
    _report("psycopg", ledger, rows)
    check_ledger(ledger, rows)
    _assert_exercised(ledger)


def test_ledger_sqlalchemy_engine_survives_lost_commits(
    ledger_db: PgDatabase, proxy: Proxy
) -> None:
    import sqlalchemy as sa

    from outlast.sqlalchemy._transaction import EngineAdapter

    ledger = Ledger()
    url = f"postgresql+psycopg://postgres@{proxy.host}:{proxy.port}/{ledger_db.name}"
    proxy.add_fault("cut_after", toxicity=COMMIT_CUT_TOXICITY, pattern=CUT_COMMIT)
    engine = sa.create_engine(url, pool_size=1, max_overflow=2, connect_args={"connect_timeout": 5})
    stmt = sa.text("INSERT INTO ledger (id, attempt) VALUES (:i, :a)")

    def insert(conn: sa.Connection, i: int, attempt: list[int]) -> int:
        attempt[0] += 1
        conn.execute(stmt, {"i": i, "a": attempt[0]})
        return i

    try:
        adapter = FaultyAdapter(EngineAdapter(engine), proxy, random.Random(SEED + 1), ledger)
        _run_sync(_guard(), adapter, ledger, insert)
    finally:
        engine.dispose()
    proxy.clear()
    rows = _rows(ledger_db)
    _report("sqlalchemy", ledger, rows)
    check_ledger(ledger, rows)
    _assert_exercised(ledger)


async def test_ledger_asyncpg_pool_survives_lost_commits(
    ledger_db: PgDatabase, proxy: Proxy
) -> None:
    import asyncpg

    from outlast._transaction import arun_transaction
    from outlast.asyncpg._transaction import AsyncpgAdapter

    ledger = Ledger()
    url = f"postgresql://postgres@{proxy.host}:{proxy.port}/{ledger_db.name}"
    proxy.add_fault("cut_after", toxicity=COMMIT_CUT_TOXICITY, pattern=CUT_COMMIT)

    async def insert(conn: Any, i: int, attempt: list[int]) -> int:
        attempt[0] += 1
        await conn.execute("INSERT INTO ledger (id, attempt) VALUES ($1, $2)", i, attempt[0])
        return i

    guard = _guard()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, timeout=5)
    try:
        adapter = AsyncFaultyAdapter(AsyncpgAdapter(pool), proxy, random.Random(SEED + 2), ledger)
        for i in range(N):
            adapter.choose()
            try:
                await arun_transaction(guard, adapter, insert, i, [0])
                ledger.outcome[i] = "ok"
            except outlast.CommitOutcomeUnknown:
                ledger.outcome[i] = "unknown"
            except outlast.DatabaseUnavailable:
                ledger.outcome[i] = "failed"
    finally:
        await pool.close()
    proxy.clear()
    rows = _rows(ledger_db)
    _report("asyncpg", ledger, rows)
    check_ledger(ledger, rows)
    _assert_exercised(ledger)
