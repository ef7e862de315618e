"""outlast.jobs on a real PostgreSQL: running, limits, transactional enqueue, dedupe,
retries and dead letters, cancellation, scheduling, graceful stop."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time

import psycopg
import pytest
from jobs_kit import Gauge, count, rows, running, until

import outlast
import outlast.jobs
from outlast.jobs import Jobs, NewJob

FAST = outlast.Backoff(initial=0.01, cap=0.02)


def test_sync_and_async_handlers_run_every_job_exactly_once(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn)
    seen: dict[str, list[int]] = {"sync": [], "async": []}
    lock = threading.Lock()

    @jobs.handler("thread")
    def in_thread(job: outlast.jobs.Job) -> None:
        assert threading.current_thread() is not threading.main_thread()
        with lock:
            seen["sync"].append(job.payload["n"])

    @jobs.handler("task")
    async def in_task(job: outlast.jobs.Job) -> None:
        await asyncio.sleep(0)
        seen["async"].append(job.payload["n"])

    ids = jobs.enqueue_many(
        [NewJob("thread", {"n": n}) for n in range(150)]
        + [NewJob("task", {"n": n}) for n in range(150)]
    )
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 300
    try:
        with running(jobs.worker(concurrency=8)):
            until(lambda: len(seen["sync"]) + len(seen["async"]) >= 300, what="300 jobs")
            until(lambda: count(pg_dsn) == 0, what="finished rows deleted")
    finally:
        jobs.close()
    assert sorted(seen["sync"]) == list(range(150))
    assert sorted(seen["async"]) == list(range(150))
    assert rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.slots") == [(0,)]


def test_per_key_limit_holds_across_two_workers(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, limits={"recording": 2})
    gauge = Gauge()

    @jobs.handler("recording")
    async def record(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        assert job.slot in (1, 2)
        await asyncio.sleep(0.003)
        gauge.leave(job)

    # Keys in runs, so that many jobs of one business wait side by side.
    jobs.enqueue_many([NewJob("recording", {}, key=f"biz{n // 40}") for n in range(400)])
    try:
        with running(jobs.worker(concurrency=12)), running(jobs.worker(concurrency=12)):
            until(lambda: len(gauge.done) >= 400, what="400 jobs")
    finally:
        jobs.close()
    assert gauge.peak == 2  # reached, never exceeded
    assert all(n == 1 for n in gauge.runs.values())
    assert rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.slots") == [(0,)]


def test_unlimited_kinds_and_jobs_without_key_ignore_slots(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, limits={"limited": 1})
    gauge = Gauge()

    @jobs.handler("limited")
    async def limited(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        await asyncio.sleep(0.05)
        gauge.leave(job)

    jobs.enqueue_many([NewJob("limited", {}) for _ in range(6)])  # no key: no slot
    try:
        with running(jobs.worker(concurrency=6)):
            until(lambda: len(gauge.done) >= 6)
    finally:
        jobs.close()
    assert gauge.peak == 6


def test_enqueue_joins_the_callers_psycopg_transaction(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn)
    jobs.install()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE calls (sid text)")
        conn.execute("INSERT INTO calls VALUES ('CA1')")
        job_id = jobs.enqueue("recording", {"sid": "CA1"}, key=42, conn=conn)
        assert isinstance(job_id, int)
        conn.rollback()
    assert count(pg_dsn) == 0  # rolled back with the caller's row
    with psycopg.connect(pg_dsn) as conn:
        jobs.enqueue("recording", {"sid": "CA2"}, key=42, conn=conn)
        assert count(pg_dsn) == 0  # not visible before the caller commits
        conn.commit()
    assert rows(pg_dsn, "SELECT kind, key, payload FROM outlast_jobs.jobs") == [
        ("recording", "42", {"sid": "CA2"})
    ]
    jobs.close()


def test_enqueue_on_psycopg2_and_sqlalchemy_connections(pg_database) -> None:  # type: ignore[no-untyped-def]
    import psycopg2
    import sqlalchemy
    from sqlalchemy.orm import Session

    dsn = pg_database.dsn()
    jobs = Jobs(dsn)
    jobs.install()
    conn2 = psycopg2.connect(dsn)
    try:
        jobs.enqueue("a", {"via": "psycopg2"}, conn=conn2)
        conn2.rollback()
        jobs.enqueue("a", {"via": "psycopg2"}, conn=conn2)
        conn2.commit()
    finally:
        conn2.close()
    for driver in ("psycopg", "psycopg2"):
        engine = sqlalchemy.create_engine(pg_database.url(driver=driver))
        try:
            with Session(engine) as session:
                jobs.enqueue("a", {"via": f"session-{driver}"}, conn=session)
                session.rollback()
                jobs.enqueue("a", {"via": f"session-{driver}"}, conn=session)
                session.commit()
            with engine.begin() as connection:
                jobs.enqueue("a", {"via": f"connection-{driver}"}, conn=connection)
            with engine.connect() as connection:  # "commit as you go"
                jobs.enqueue("a", {"via": f"commit-as-you-go-{driver}"}, conn=connection)
                connection.commit()
        finally:
            engine.dispose()
    got = sorted(r[0]["via"] for r in rows(dsn, "SELECT payload FROM outlast_jobs.jobs"))
    assert got == [
        "commit-as-you-go-psycopg",
        "commit-as-you-go-psycopg2",
        "connection-psycopg",
        "connection-psycopg2",
        "psycopg2",
        "session-psycopg",
        "session-psycopg2",
    ]
    jobs.close()


async def test_aenqueue_joins_async_transactions(pg_database) -> None:  # type: ignore[no-untyped-def]
    import asyncpg

    dsn = pg_database.dsn()
    jobs = Jobs(dsn)
    await jobs.ainstall()
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        await jobs.aenqueue("a", {"via": "psycopg"}, conn=aconn)
        await aconn.rollback()
        await jobs.aenqueue("a", {"via": "psycopg"}, key=7, conn=aconn, dedupe="x")
        await aconn.commit()
    conn = await asyncpg.connect(pg_database.url(driver=None))
    try:
        async with conn.transaction():
            ids = await jobs.aenqueue_many(
                [NewJob("a", {"via": "asyncpg"}, run_at=0.5), NewJob("a", {}, dedupe="x")],
                conn=conn,
            )
        assert isinstance(ids[0], int) and ids[1] is None  # "x" is live already
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await jobs.aenqueue("a", {"via": "asyncpg-rolled-back"}, conn=conn)
                raise RuntimeError("the caller's transaction fails")
    finally:
        await conn.close()
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    for driver in ("asyncpg", "psycopg"):
        engine = create_async_engine(pg_database.url(driver=driver))
        try:
            async with AsyncSession(engine) as session:
                await jobs.aenqueue("a", {"via": f"async-session-{driver}"}, conn=session)
                await session.rollback()
                await jobs.aenqueue("a", {"via": f"async-session-{driver}"}, conn=session)
                await session.commit()
        finally:
            await engine.dispose()
    await jobs.aclose()
    got = sorted(r[0]["via"] for r in rows(dsn, "SELECT payload FROM outlast_jobs.jobs"))
    assert got == ["async-session-asyncpg", "async-session-psycopg", "asyncpg", "psycopg"]


def test_dedupe_keeps_one_live_job_per_key(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn)
    ran: list[int] = []

    @jobs.handler("sync")
    def sync(job: outlast.jobs.Job) -> None:
        ran.append(job.id)

    first = jobs.enqueue("sync", {}, dedupe="lead-7")
    assert isinstance(first, int)
    assert jobs.enqueue("sync", {}, dedupe="lead-7") is None
    assert (
        jobs.enqueue_many([NewJob("sync", dedupe="lead-8"), NewJob("sync", dedupe="lead-8")])[1]
        is None
    )
    assert jobs.enqueue("other", {}, dedupe="lead-7") is not None  # per kind
    try:
        with running(jobs.worker(kinds=["sync"])):
            until(lambda: len(ran) >= 2)
            until(lambda: count(pg_dsn, "kind = 'sync'") == 0)
            again = jobs.enqueue("sync", {}, dedupe="lead-7")  # finished: a new one is fine
            assert isinstance(again, int) and again != first
            until(lambda: len(ran) >= 3)
    finally:
        jobs.close()
    assert len(ran) == len(set(ran)) == 3


def test_failures_retry_with_backoff_then_become_dead_letters(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = Jobs(pg_dsn, max_attempts=3)
    attempts: list[int] = []

    @jobs.handler("flaky", retry_backoff=FAST)
    def flaky(job: outlast.jobs.Job) -> None:
        attempts.append(job.attempt)
        if job.payload["ok_on"] != job.attempt:
            raise ValueError(f"upstream said no (password=hunter2) on try {job.attempt}")

    good = jobs.enqueue("flaky", {"ok_on": 2})
    dead = jobs.enqueue("flaky", {"ok_on": 99})
    caplog.set_level(logging.WARNING, logger="outlast")
    try:
        with running(jobs.worker()):
            until(lambda: count(pg_dsn, "state = 'failed'") == 1 and count(pg_dsn) == 1)
    finally:
        jobs.close()
    assert sorted(attempts) == [1, 1, 2, 2, 3]
    (row,) = rows(pg_dsn, "SELECT id, attempts, last_error, slot, worker FROM outlast_jobs.jobs")
    assert row[0] == dead and row[1] == 3 and row[3] is None
    assert "ValueError: upstream said no" in row[2] and "hunter2" not in row[2]
    failed = [r.getMessage() for r in caplog.records if "[WORKER_JOB_FAILED]" in r.getMessage()]
    assert len(failed) == 4  # two tries of each, the third of the dead one
    assert sum("dead_letter" in m for m in failed) == 1
    assert all("hunter2" not in m for m in failed)
    assert good not in [r[0] for r in rows(pg_dsn, "SELECT id FROM outlast_jobs.jobs")]
    # A dead letter can be put back with more tries.
    assert jobs.requeue(dead, attempts=1) is True
    assert rows(pg_dsn, "SELECT state, max_attempts FROM outlast_jobs.jobs") == [("queued", 4)]
    jobs.close()


def test_cancel_a_waiting_job_and_a_running_one(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, lease=1.5)
    started = threading.Event()
    ended: list[str] = []

    @jobs.handler("long")
    async def long(job: outlast.jobs.Job) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    waiting = jobs.enqueue("later", {})
    assert jobs.cancel(waiting) == "cancelled"
    assert jobs.cancel(waiting) is None
    job_id = jobs.enqueue("long", {})
    assert job_id is not None
    try:
        with running(jobs.worker(kinds=["long"])):
            assert started.wait(10)
            assert jobs.cancel(job_id) == "requested"
            until(lambda: ended == ["cancelled"], what="the handler cancelled by the heartbeat")
            until(lambda: count(pg_dsn, "id = %s AND state = 'cancelled'", job_id) == 1)
    finally:
        jobs.close()


def test_run_at_and_priority(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, poll_interval=0.1)
    order: list[str] = []

    @jobs.handler("p")
    def p(job: outlast.jobs.Job) -> None:
        order.append(job.payload["name"])

    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1.5)
    jobs.enqueue("p", {"name": "scheduled"}, run_at=later)
    jobs.enqueue_many(
        [NewJob("p", {"name": "low"}, priority=-1), NewJob("p", {"name": "high"}, priority=5)]
    )
    jobs.enqueue("p", {"name": "normal"})
    t0 = time.monotonic()
    try:
        with running(jobs.worker(concurrency=1)):
            until(lambda: len(order) == 3)
            assert order == ["high", "normal", "low"]
            until(lambda: len(order) == 4)
            assert time.monotonic() - t0 >= 1.0
    finally:
        jobs.close()
    assert order[-1] == "scheduled"


def test_graceful_stop_releases_jobs_still_running(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, limits={"rec": 1})
    started = threading.Event()

    @jobs.handler("rec")
    async def rec(job: outlast.jobs.Job) -> None:
        started.set()
        await asyncio.sleep(60)

    job_id = jobs.enqueue("rec", {}, key="biz", max_attempts=1)
    try:
        worker = jobs.worker(shutdown_timeout=0.2)
        with running(worker):
            assert started.wait(10)
            assert count(pg_dsn, "state = 'running'") == 1
            assert rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.slots") == [(1,)]
    finally:
        jobs.close()
    # Back in the queue, slot freed, and the interrupted try did not use up its only attempt.
    assert rows(
        pg_dsn, "SELECT id, state, worker, attempts, max_attempts FROM outlast_jobs.jobs"
    ) == [(job_id, "queued", None, 1, 2)]
    assert rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.slots") == [(0,)]


def test_bad_configuration_is_a_configuration_error() -> None:
    dsn = "host=db password=s3cret dbname=app"
    bad: list[dict[str, object]] = [
        {"limits": {"rec": 0}},
        {"limits": {"": 2}},
        {"schema": "Robert'); DROP TABLE"},
        {"lease": 0.5},
        {"lease": "30"},
        {"max_attempts": 0},
        {"poll_interval": -1},
    ]
    for options in bad:
        with pytest.raises(outlast.ConfigurationError) as info:
            Jobs(dsn, **options)  # type: ignore[arg-type]
        assert "s3cret" not in str(info.value)
    jobs = Jobs(dsn, lease=datetime.timedelta(seconds=12))
    assert jobs.lease == 12.0
    for call in (
        lambda: jobs.enqueue("", {}),
        lambda: jobs.enqueue("k", {1, 2}),
        lambda: jobs.enqueue("k", {}, key=1.5),  # type: ignore[arg-type]
        lambda: jobs.enqueue("k", {}, run_at=datetime.datetime(2030, 1, 1)),
        lambda: jobs.enqueue("k", {}, max_attempts=0),
        lambda: jobs.enqueue("k", {}, conn=object()),
        jobs.worker,  # no handlers
    ):
        with pytest.raises(outlast.ConfigurationError):
            call()

    @jobs.handler("k")
    def k(job: outlast.jobs.Job) -> None: ...

    with pytest.raises(outlast.ConfigurationError):
        jobs.handler("k")(k)
    with pytest.raises(outlast.ConfigurationError):
        jobs.worker(concurrency=0)
    with pytest.raises(outlast.ConfigurationError):
        jobs.worker(kinds=["nope"])


def test_public_names_of_outlast_jobs() -> None:
    # Sorted the way ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    def isort_style(name: str) -> tuple[bool, bool, str]:
        return (not name.isupper(), not name[0].isupper(), name)

    assert list(outlast.jobs.__all__) == sorted(outlast.jobs.__all__, key=isort_style)
    for name in outlast.jobs.__all__:
        obj = getattr(outlast.jobs, name)
        if isinstance(obj, type):
            assert obj.__module__ == "outlast.jobs", name


def test_a_hot_key_does_not_starve_the_others(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, limits={"rec": 1})
    finished: list[str] = []

    @jobs.handler("rec")
    async def rec(job: outlast.jobs.Job) -> None:
        await asyncio.sleep(0.02)
        finished.append(str(job.key))

    # 2,000 jobs of one business first in line, then one job each for ten others.
    jobs.enqueue_many([NewJob("rec", {}, key="hot") for _ in range(2000)])
    jobs.enqueue_many([NewJob("rec", {}, key=f"k{n}") for n in range(10)])
    try:
        with running(jobs.worker(concurrency=5)):
            until(lambda: sum(k != "hot" for k in finished) == 10, what="the ten other keys")
            hot_done = sum(k == "hot" for k in finished)
    finally:
        jobs.close()
    assert hot_done < 100  # the others ran right away, beside the hot key's single slot


_DJANGO = """
import sys
import django
from django.conf import settings

settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": sys.argv[1], "USER": "postgres",
    "HOST": sys.argv[2], "PORT": sys.argv[3]}})
django.setup()
from django.db import connection, transaction
import outlast.jobs

jobs = outlast.jobs.Jobs(sys.argv[4])
try:
    with transaction.atomic():
        jobs.enqueue("a", {"via": "django-rolled-back"}, conn=connection)
        raise RuntimeError
except RuntimeError:
    pass
with transaction.atomic():
    print(jobs.enqueue("a", {"via": "django"}, key=3, conn=connection))
jobs.close()
"""


def test_enqueue_on_djangos_connection(pg_database) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    dsn = pg_database.dsn()
    Jobs(dsn).install()
    server = pg_database.server
    out = subprocess.run(
        [sys.executable, "-c", _DJANGO, pg_database.name, server.host, str(server.port), dsn],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    job_id = int(out.stdout.strip())
    assert rows(dsn, "SELECT id, key, payload FROM outlast_jobs.jobs") == [
        (job_id, "3", {"via": "django"})
    ]


def test_keep_done_keeps_finished_rows_and_frees_their_slots(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, limits={"k": 1}, keep_done=True)
    ran: list[int] = []

    @jobs.handler("k")
    def k(job: outlast.jobs.Job) -> None:
        ran.append(job.id)

    ids = jobs.enqueue_many([NewJob("k", {}, key="b", dedupe=f"d{n}") for n in range(3)])
    try:
        with running(jobs.worker(concurrency=3)):
            until(lambda: count(pg_dsn, "state = 'done'") == 3)
        assert sorted(ran) == sorted(ids)
        assert rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.slots") == [(0,)]
        assert count(pg_dsn, "finished_at IS NOT NULL AND slot IS NULL") == 3
        assert jobs.enqueue("k", {}, key="b", dedupe="d0") is not None  # done is not live
        assert [k.kind for k in jobs.status().kinds] == ["k"]
    finally:
        jobs.close()


def test_schema_is_installed_once_by_many_at_once_and_a_newer_one_is_refused(
    pg_dsn: str,
) -> None:
    from outlast.jobs._schema import install

    errors: list[BaseException] = []

    def one() -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                assert install(conn, "outlast_jobs") == outlast.jobs.SCHEMA_VERSION
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert rows(pg_dsn, "SELECT version FROM outlast_jobs.meta") == [(outlast.jobs.SCHEMA_VERSION,)]
    rows(pg_dsn, "UPDATE outlast_jobs.meta SET version = 99 RETURNING 1")
    jobs = Jobs(pg_dsn)
    try:
        with pytest.raises(outlast.ConfigurationError, match="newer than this outlast"):
            jobs.install()
    finally:
        jobs.close()
