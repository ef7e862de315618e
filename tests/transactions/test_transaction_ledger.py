"""1,000 transactions per driver through the chaos proxy, with faults at random points.

Public API only: ``guard.transaction(pool, fn)`` / ``guard.atransaction`` on
outlast's hardened factories (psycopg 3 pool, SQLAlchemy engine, psycopg2
pool, asyncpg pool), all connected through the ``pg_proxy`` fixture. ``fn``
breaks the link itself at random points, including right after COMMIT is sent
(see ``ledger_kit``). Afterwards every acknowledged write is present exactly
once (the table has no UNIQUE constraint), nothing was written twice, every
lost COMMIT was resolved or reported as `CommitOutcomeUnknown`, and enough
COMMITs were really resolved as committed and as aborted that the test cannot
pass without exercising the resolution. Printed counts go to the report
(``pytest -s``).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from ledger_kit import SCHEMA, Injector, Ledger, check_ledger

import outlast
from outlast.testing.plugin import PgDatabase

N = int(os.environ.get("OUTLAST_LEDGER_N", "1000"))
SEED = 20240505

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def ledger_db(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
    return pg_database


def _guard() -> outlast.Guard:
    return outlast.Guard(
        "ledger",
        retry=outlast.Retry(
            attempts=10, timeout=30.0, backoff=outlast.Backoff(initial=0.005, cap=0.2)
        ),
        breaker=outlast.Breaker(enabled=False),
        listeners=(),
    )


def _rows(db: PgDatabase) -> dict[int, tuple[int, int]]:
    with psycopg.connect(db.dsn()) as conn:
        doomed = conn.execute("SELECT count(*) FROM ledger WHERE doom IS NOT NULL").fetchone()
        assert doomed == (0,)  # the deferred key let no doomed row through
        rows = conn.execute("SELECT id, count(*), max(attempt) FROM ledger GROUP BY id")
        return {i: (n, a) for i, n, a in rows.fetchall()}


def _check(name: str, ledger: Ledger, db: PgDatabase, elapsed: float) -> None:
    rows = _rows(db)
    counts = ledger.counts()
    resolved = ledger.resolutions()
    print(
        f"\n[ledger {name}] n={len(ledger.outcome)} in {elapsed:.1f}s ok={counts['ok']}"
        f" unknown={counts['unknown']} failed={counts['failed']}"
        f" resolved-committed={resolved['committed']} resolved-aborted={resolved['aborted']}"
        f" slowest={ledger.slowest:.2f}s injected={dict(sorted(ledger.injected.items()))}"
        f" rows={len(rows)}"
    )
    check_ledger(ledger, rows)
    assert ledger.unfired == 0  # every armed COMMIT cut struck a COMMIT
    assert counts["ok"] >= N * 0.95
    assert counts["unknown"] <= max(1, N // 100)  # the server was up: answers came
    # Both resolutions really happened, through the real server.
    assert resolved["committed"] >= max(1, N // 100)
    assert resolved["aborted"] >= max(1, N // 200)


# The INSERT each driver runs: (conn, id, attempt, doom) with doom None or 1.
SyncInsert = Callable[[Any, int, int, int | None], None]
AsyncInsert = Callable[[Any, int, int, int | None], Awaitable[None]]


def _sync_fn(injector: Injector, insert: SyncInsert) -> Callable[[Any, int], int]:
    def write(conn: Any, i: int) -> int:
        kind, attempt = injector.draw(i)
        if kind == "before":
            injector.kill_link()
        insert(conn, i, attempt, 1 if kind == "doomed" else None)
        if kind == "middle":
            injector.kill_link()
        elif kind in ("reply_lost", "cut_early", "doomed"):
            injector.arm_commit_cut(kind)
        return i

    return write


def _async_fn(injector: Injector, insert: AsyncInsert) -> Callable[[Any, int], Awaitable[int]]:
    async def write(conn: Any, i: int) -> int:
        kind, attempt = injector.draw(i)
        if kind == "before":
            injector.kill_link()
        await insert(conn, i, attempt, 1 if kind == "doomed" else None)
        if kind == "middle":
            injector.kill_link()
        elif kind in ("reply_lost", "cut_early", "doomed"):
            injector.arm_commit_cut(kind)
        return i

    return write


def _run_sync(source: Any, guard: outlast.Guard, injector: Injector, insert: SyncInsert) -> None:
    ledger = injector.ledger
    write = _sync_fn(injector, insert)
    for i in range(N):
        start = time.monotonic()
        try:
            assert guard.transaction(source, write, i) == i
            ledger.outcome[i] = "ok"
        except outlast.CommitOutcomeUnknown:
            ledger.outcome[i] = "unknown"
        except outlast.DatabaseUnavailable:
            ledger.outcome[i] = "failed"
        ledger.slowest = max(ledger.slowest, time.monotonic() - start)
        injector.settle()


def _libpq_insert(conn: Any, i: int, attempt: int, doom: int | None) -> None:
    conn.execute("INSERT INTO ledger (id, attempt, doom) VALUES (%s, %s, %s)", (i, attempt, doom))


def test_ledger_psycopg_pool(ledger_db: PgDatabase, pg_proxy: Any) -> None:
    from outlast.psycopg import ConnectionPool

    ledger, guard = Ledger(), _guard()
    injector = Injector(pg_proxy, random.Random(SEED), ledger)
    start = time.monotonic()
    with ConnectionPool(
        pg_proxy.dsn(ledger_db.name), guard=guard, min_size=1, max_size=2, open=True
    ) as pool:
        _run_sync(pool, guard, injector, _libpq_insert)
    _check("psycopg pool", ledger, ledger_db, time.monotonic() - start)


def test_ledger_sqlalchemy_engine(ledger_db: PgDatabase, pg_proxy: Any) -> None:
    import sqlalchemy as sa

    from outlast.sqlalchemy import create_engine

    stmt = sa.text("INSERT INTO ledger (id, attempt, doom) VALUES (:i, :a, :d)")

    def insert(conn: sa.Connection, i: int, attempt: int, doom: int | None) -> None:
        conn.execute(stmt, {"i": i, "a": attempt, "d": doom})

    ledger, guard = Ledger(), _guard()
    injector = Injector(pg_proxy, random.Random(SEED + 1), ledger)
    start = time.monotonic()
    engine = create_engine(pg_proxy.url(ledger_db.name), guard=guard, pool_size=1, max_overflow=2)
    try:
        _run_sync(engine, guard, injector, insert)
    finally:
        engine.dispose()
    _check("sqlalchemy", ledger, ledger_db, time.monotonic() - start)


def test_ledger_psycopg2_pool(ledger_db: PgDatabase, pg_proxy: Any) -> None:
    from outlast.psycopg2 import ConnectionPool

    def insert(conn: Any, i: int, attempt: int, doom: int | None) -> None:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO ledger (id, attempt, doom) VALUES (%s, %s, %s)", (i, attempt, doom)
            )

    ledger, guard = Ledger(), _guard()
    injector = Injector(pg_proxy, random.Random(SEED + 3), ledger)
    start = time.monotonic()
    with ConnectionPool(pg_proxy.dsn(ledger_db.name), guard=guard, max_size=2) as pool:
        _run_sync(pool, guard, injector, insert)
    _check("psycopg2 pool", ledger, ledger_db, time.monotonic() - start)


async def test_ledger_asyncpg_pool(ledger_db: PgDatabase, pg_proxy: Any) -> None:
    from outlast.asyncpg import create_pool

    async def insert(conn: Any, i: int, attempt: int, doom: int | None) -> None:
        await conn.execute(
            "INSERT INTO ledger (id, attempt, doom) VALUES ($1, $2, $3)", i, attempt, doom
        )

    ledger, guard = Ledger(), _guard()
    injector = Injector(pg_proxy, random.Random(SEED + 2), ledger)
    write = _async_fn(injector, insert)
    start = time.monotonic()
    url = pg_proxy.url(ledger_db.name, driver=None)
    async with create_pool(url, guard=guard, min_size=1, max_size=2) as pool:
        for i in range(N):
            began = time.monotonic()
            try:
                assert await guard.atransaction(pool, write, i) == i
                ledger.outcome[i] = "ok"
            except outlast.CommitOutcomeUnknown:
                ledger.outcome[i] = "unknown"
            except outlast.DatabaseUnavailable:
                ledger.outcome[i] = "failed"
            ledger.slowest = max(ledger.slowest, time.monotonic() - began)
            injector.settle()
    _check("asyncpg pool", ledger, ledger_db, time.monotonic() - start)
