"""What a lost COMMIT teaches the Guard, and how long a status question may take.

- A lost COMMIT that ``pg_xact_status`` then finds *committed* is a success:
  the server committed and answered. With every COMMIT's reply cut, writes
  keep succeeding, exactly once, and the breaker stays closed. One found
  *aborted* is the failure it seemed: one outage, then the retry succeeds.
- The status question keeps to its timeout on a plain SQLAlchemy engine (no
  ``connect_timeout``, no keepalives) when the link is blackholed: its
  connect gets a connect timeout, its query a socket deadline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import outlast
from outlast.chaos import Proxy
from outlast.testing.plugin import PgDatabase

EVERY_COMMIT_REPLY_LOST = {"pattern": r"^\s*COMMIT"}  # no count: every COMMIT


@pytest.fixture
def db(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (tag text NOT NULL)")
    return pg_database


@pytest.fixture
def proxy(pg_server: Any) -> Iterator[Proxy]:
    with Proxy(upstream=(pg_server.host, pg_server.port)) as p:
        yield p


def _stored(db: PgDatabase) -> dict[str, int]:
    with psycopg.connect(db.dsn()) as conn:
        rows = conn.execute("SELECT tag, count(*) FROM items GROUP BY tag").fetchall()
    return {tag: int(n) for tag, n in rows}


def _guard(events: list[object]) -> outlast.Guard:
    # The default breaker (5 in a row, or half of at least 10 calls in 30 s).
    return outlast.Guard(
        "lost-commit",
        retry=outlast.Retry(attempts=5, timeout=30, backoff=outlast.Backoff(initial=0.05)),
        listeners=(events.append,),
    )


def _sqlalchemy(
    db: PgDatabase, proxy: Proxy, guard: outlast.Guard
) -> tuple[Any, Callable[[], None]]:
    from outlast.sqlalchemy import create_engine

    url = f"postgresql+psycopg://postgres@{proxy.host}:{proxy.port}/{db.name}"
    engine = create_engine(url, guard=guard)  # its error hook reports faults to the Guard too

    def add(conn: sa.Connection, tag: str) -> str:
        conn.execute(sa.text("INSERT INTO items VALUES (:t)"), {"t": tag})
        return tag

    return (engine, add), engine.dispose


def _psycopg_pool(
    db: PgDatabase, proxy: Proxy, guard: outlast.Guard
) -> tuple[Any, Callable[[], None]]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(db.dsn(host=proxy.host, port=proxy.port), min_size=1, open=True)

    def add(conn: psycopg.Connection[Any], tag: str) -> str:
        conn.execute("INSERT INTO items VALUES (%s)", (tag,))
        return tag

    return (pool, add), pool.close


SOURCES = {"sqlalchemy": _sqlalchemy, "psycopg_pool": _psycopg_pool}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_lost_commits_found_committed_leave_the_breaker_closed(
    db: PgDatabase, proxy: Proxy, source: str
) -> None:
    """Fails on the code before this change: the breaker opened and writes were refused."""
    events: list[object] = []
    guard = _guard(events)
    (target, add), close = SOURCES[source](db, proxy, guard)
    tags = [f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(14)]
    try:
        with proxy.fault("cut_after", **EVERY_COMMIT_REPLY_LOST):
            results = [guard.transaction(target, add, tag) for tag in tags]
    finally:
        close()
    assert results == tags
    assert _stored(db) == dict.fromkeys(tags, 1)
    assert guard.breaker_state == "closed"
    state = guard.state
    assert (state.up, state.outages, state.last_fault) == (True, 0, None)
    assert not [e for e in events if isinstance(e, outlast.BreakerOpened | outlast.DatabaseDown)]


def test_a_lost_commit_found_aborted_is_one_outage(db: PgDatabase, proxy: Proxy) -> None:
    events: list[object] = []
    guard = _guard(events)
    (target, add), close = _psycopg_pool(db, proxy, guard)
    try:
        proxy.add_fault("cut_after", pattern=r"^\s*COMMIT", forward=False, count=1)
        assert guard.transaction(target, add, "once") == "once"
    finally:
        close()
    assert _stored(db) == {"once": 1}
    state = guard.state
    assert (state.up, state.outages) == (True, 1)
    assert (
        state.last_fault is not None and state.last_fault.kind is outlast.FaultKind.COMMIT_UNKNOWN
    )
    downs = [e for e in events if isinstance(e, outlast.DatabaseDown)]
    assert len(downs) == 1


def _ask_in_thread(ask: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    answer: list[object] = []

    def run() -> None:
        try:
            answer.append(ask())
        except Exception as exc:
            answer.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, answer


@pytest.mark.parametrize("connection", ["pooled", "new"])
@pytest.mark.parametrize("kind", ["engine", "sessionmaker"])
def test_status_question_on_a_plain_engine_keeps_to_its_timeout(
    db: PgDatabase, proxy: Proxy, connection: str, kind: str
) -> None:
    """Fails on the code before this change: the question waited as long as the blackhole."""
    from sqlalchemy.orm import sessionmaker

    from outlast.sqlalchemy._transaction import EngineAdapter, SessionAdapter

    engine = sa.create_engine(f"postgresql+psycopg://postgres@{proxy.host}:{proxy.port}/{db.name}")
    try:
        with engine.connect() as conn:  # one idle connection in the pool
            conn.execute(sa.text("SELECT 1"))
        if connection == "new":
            engine.dispose()
        adapter = (
            EngineAdapter(engine) if kind == "engine" else SessionAdapter(sessionmaker(engine))
        )
        with proxy.fault("blackhole"):
            started = time.monotonic()
            thread, answer = _ask_in_thread(lambda: adapter.status("1", timeout=1.0))
            thread.join(20.0)  # libpq's connect timeout is whole seconds, at least 2
            stuck = thread.is_alive()
            elapsed = time.monotonic() - started
        thread.join(10.0)  # the blackhole's end closes its links: the old code ends here
    finally:
        engine.dispose()
    assert not stuck, f"the status question was still waiting after {elapsed:.1f}s"
    assert answer and isinstance(answer[0], Exception), answer
    assert outlast.classify(answer[0]) is not None  # a database fault, not a bug
