"""A worker behind a real PgBouncer in transaction mode: polling only, no prepared statements.

LISTEN through a transaction pooler is accepted but never delivers (the
session that listened is handed to someone else), so a DSN with the
``pgbouncer`` preset turns it off and the worker finds jobs by polling; every
statement of the queue is a single autocommit statement, so none depends on
session state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from jobs_kit import Gauge, count, running, until

import outlast.jobs
from outlast.jobs import Jobs, NewJob
from outlast.testing import PgBouncer


@pytest.fixture
def pgbouncer(pg_bouncer: Callable[..., PgBouncer]) -> tuple[str, int]:
    """Transaction pooling, trust auth, startup options dropped (what many deployments run)."""
    bouncer = pg_bouncer(
        auth_type="trust",
        ignore_startup_parameters=("extra_float_digits", "options"),
        settings={"default_pool_size": 4, "max_client_conn": 100},
    )
    return "127.0.0.1", bouncer.port


def test_a_worker_behind_pgbouncer_in_transaction_mode(pgbouncer, pg_database) -> None:  # type: ignore[no-untyped-def]
    host, port = pgbouncer
    dsn = pg_database.dsn(host=host, port=port)
    jobs = Jobs(dsn, preset="pgbouncer", limits={"rec": 2}, poll_interval=0.2)
    assert jobs.listen is False  # decided from the preset: polling only
    gauge = Gauge()

    @jobs.handler("rec")
    async def rec(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        await asyncio.sleep(0.005)
        gauge.leave(job)

    jobs.enqueue_many([NewJob("rec", {}, key=n % 4) for n in range(120)])
    try:
        worker = jobs.worker(concurrency=8)
        with running(worker):
            until(lambda: len(gauge.done) == 120, what="120 jobs through pgbouncer")
            assert worker.health()["worker"]["listen"] == "off"
            jobs.enqueue("rec", {}, key=1)  # found by polling
            until(lambda: len(gauge.done) == 121)
    finally:
        jobs.close()
    assert gauge.peak == 2
    assert count(pg_database.dsn()) == 0
