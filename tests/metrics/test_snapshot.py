"""The one read model the exporters translate: Guards, pools, tasks, answers (real parts).

Pools are the real hardened pools of each driver against the embedded
PostgreSQL, exhausted on purpose where the driver counts waiting requests and
timeouts; the supervisor runs a real thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import outlast
from outlast._core.telemetry.snapshot import snapshot
from outlast.supervise import Supervisor


def _pool(name_part: str) -> Any:
    pools = [p for p in snapshot().pools if name_part in p.name or name_part == p.driver]
    assert pools, [p.name for p in snapshot().pools]
    return pools[-1]


def test_psycopg2_pool_counts_waiting_requests_and_timeouts(pg_database: Any) -> None:
    from outlast.psycopg2 import ConnectionPool, PoolTimeout

    guard = outlast.Guard("snap-pg2", listeners=())
    pool = ConnectionPool(pg_database.dsn(), guard=guard, max_size=1, timeout=0.3)
    try:
        conn = pool.getconn()
        errors: list[BaseException] = []

        def wait_in_vain() -> None:
            try:
                pool.getconn()
            except BaseException as exc:
                errors.append(exc)

        waiting = threading.Thread(target=wait_in_vain)
        waiting.start()
        deadline = time.monotonic() + 10
        while _pool("psycopg2").stats.pending == 0:
            assert time.monotonic() < deadline, "the waiter never showed as pending"
            time.sleep(0.01)
        waiting.join(10)
        assert len(errors) == 1 and isinstance(errors[0], PoolTimeout)
        stats = next(p for p in snapshot().pools if p.guard == "snap-pg2").stats
        assert (stats.used, stats.idle, stats.max) == (1, 0, 1)
        assert stats.pending == 0 and stats.timeouts == 1
        assert stats.wait_seconds is not None and stats.wait_seconds >= 0.2
        pool.putconn(conn)
        stats = next(p for p in snapshot().pools if p.guard == "snap-pg2").stats
        assert (stats.used, stats.idle) == (0, 1)
    finally:
        pool.close()


def test_psycopg_pool_reports_its_own_figures(pg_database: Any) -> None:
    import psycopg_pool

    from outlast.psycopg import ConnectionPool

    guard = outlast.Guard("snap-pg3", listeners=())
    with ConnectionPool(
        pg_database.dsn(), guard=guard, min_size=1, max_size=1, timeout=0.3, open=True
    ) as pool:
        pool.wait()
        with pool.connection():
            with pytest.raises(psycopg_pool.PoolTimeout):
                pool.getconn(timeout=0.2)
            stats = next(p for p in snapshot().pools if p.guard == "snap-pg3").stats
            assert (stats.used, stats.idle, stats.max) == (1, 0, 1)
            assert stats.timeouts == 1


def test_sqlalchemy_and_asyncpg_pools_report_used_and_idle(pg_database: Any) -> None:
    from outlast.asyncpg import create_pool
    from outlast.sqlalchemy import create_engine

    guard = outlast.Guard("snap-sa", listeners=())
    engine = create_engine(pg_database.url(), guard=guard)
    try:
        with engine.connect():
            stats = next(p for p in snapshot().pools if p.guard == "snap-sa").stats
            assert stats.used == 1 and stats.max is not None and stats.max >= 1
            assert stats.pending is None  # SQLAlchemy does not count waiters
    finally:
        engine.dispose()

    async def asyncpg_figures() -> tuple[int, int]:
        aguard = outlast.Guard("snap-apg", listeners=())
        pool = await create_pool(pg_database.url(driver=None), guard=aguard, min_size=1, max_size=2)
        try:
            async with pool.acquire():
                stats = next(p for p in snapshot().pools if p.guard == "snap-apg").stats
                return stats.used, stats.max or 0
        finally:
            await pool.close()

    assert asyncio.run(asyncpg_figures()) == (1, 2)


def test_supervised_tasks_and_same_named_guards() -> None:
    sup = Supervisor("snap-sup")
    beat = threading.Event()

    def task(ctx: Any) -> None:
        beat.set()
        while not ctx.sleep(0.05):
            ctx.beat()

    sup.start("beater", task, heartbeat=5)
    try:
        assert beat.wait(10)
        (view,) = [t for t in snapshot().tasks if t.supervisor == "snap-sup"]
        assert view.status.state == "running" and view.status.restarts == 0
        assert view.heartbeat_age is not None and view.heartbeat_age < 5
    finally:
        sup.stop(timeout=10)

    class Down(Exception):
        sqlstate = "57P03"

    a = outlast.Guard("snap-twin", retry=outlast.Retry(attempts=1), listeners=())
    b = outlast.Guard("snap-twin", retry=outlast.Retry(attempts=1), listeners=())

    def fail() -> None:
        raise Down("starting up")

    with pytest.raises(outlast.DatabaseUnavailable):
        a.call(fail)
    b.call(lambda: None)
    (twin,) = [g for g in snapshot().guards if g.name == "snap-twin"]
    assert not twin.up  # one of the two says down
    assert twin.counters.calls == 2
    assert twin.counters.failed_without_retry == 1
    assert twin.counters.faults == {("unavailable", "starting_up"): 1}
