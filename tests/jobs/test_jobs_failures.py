"""Killed workers, live workers with short leases, lost claim answers, outages, restarts."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jobs_kit import Gauge, count, rows, running, until

import outlast
import outlast.jobs
from outlast.jobs import Jobs, NewJob

HERE = Path(__file__).parent


def _spawn_worker(dsn: str, marks: Path, lease: float) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ, JOBS_TEST_DSN=dsn, JOBS_TEST_MARKS=str(marks), JOBS_TEST_LEASE=str(lease)
    )
    return subprocess.Popen(
        [sys.executable, "-m", "outlast", "worker", "worker_app:jobs", "--concurrency", "4"],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_a_killed_workers_jobs_and_slots_pass_on_within_two_leases(
    pg_dsn: str, tmp_path: Path
) -> None:
    lease = 3.0
    marks = tmp_path / "marks"
    jobs = Jobs(pg_dsn, limits={"hold": 2}, lease=lease)
    ids = jobs.enqueue_many([NewJob("hold", {}, key="biz") for _ in range(3)])
    proc = _spawn_worker(pg_dsn, marks, lease)
    try:
        until(lambda: marks.exists() and marks.read_text().count("start") == 2, what="2 running")
        time.sleep(0.3)
        assert count(pg_dsn, "state = 'running'") == 2  # the limit: the third one waits
        proc.kill()
        killed = time.monotonic()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
    gauge = Gauge()
    restarts: dict[int, tuple[float, bool, int | None]] = {}
    taken = Jobs(pg_dsn, limits={"hold": 2}, lease=lease, poll_interval=0.2)

    @taken.handler("hold")
    async def hold(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        restarts[job.id] = (time.monotonic() - killed, job.reclaimed, job.slot)
        await asyncio.sleep(0.05)
        gauge.leave(job)

    try:
        with running(taken.worker(concurrency=4)):
            peak_slots = 0
            deadline = time.monotonic() + 30
            while len(gauge.done) < 3 and time.monotonic() < deadline:
                peak_slots = max(
                    peak_slots, rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.slots")[0][0]
                )
                time.sleep(0.05)
            assert len(gauge.done) == 3
    finally:
        taken.close()
        jobs.close()
    reclaimed = {i: r for i, r in restarts.items() if r[1]}
    assert len(reclaimed) == 2  # the two the dead worker held, taken over with their slots
    assert all(after <= 2 * lease for after, _, _ in reclaimed.values())
    assert all(after >= lease * 0.5 for after, _, _ in reclaimed.values())  # not before expiry
    assert sorted(slot for _, _, slot in reclaimed.values()) == [1, 2]
    assert gauge.peak <= 2 and peak_slots <= 2
    assert set(restarts) == set(ids)
    assert rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.slots") == [(0,)]


@pytest.mark.slow
def test_a_live_worker_with_a_short_lease_keeps_its_job(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, limits={"long": 1}, lease=2.0, poll_interval=0.1)
    gauge = Gauge()

    @jobs.handler("long")
    async def long(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        await asyncio.sleep(5.0)  # two and a half leases, heart-beaten every third of one
        gauge.leave(job)

    jobs.enqueue_many([NewJob("long", {}, key="k"), NewJob("long", {}, key="k")])
    try:
        with running(jobs.worker()), running(jobs.worker()):  # the second one keeps claiming
            until(lambda: len(gauge.done) == 2, timeout=30)
    finally:
        jobs.close()
    assert gauge.peak == 1
    assert sorted(gauge.runs.values()) == [1, 1]


def test_a_claim_whose_answer_is_lost_is_put_back_at_once(
    pg_server,
    pg_proxy,
    pg_database,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.INFO, logger="outlast")
    jobs = Jobs(pg_proxy.dsn(pg_database.name), lease=60, listen=False, poll_interval=0.1)
    gauge = Gauge()

    @jobs.handler("q")
    async def q(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        gauge.leave(job)

    Jobs(pg_database.dsn()).enqueue_many([NewJob("q", {"n": n}) for n in range(20)])
    # The first claim runs and commits on the server; its answer never comes back.
    pg_proxy.add_fault("cut_after", pattern=r"^\s*WITH expired", count=1)
    started = time.monotonic()
    try:
        with running(jobs.worker(concurrency=20)):
            until(lambda: len(gauge.done) == 20, timeout=30)
    finally:
        jobs.close()
    assert time.monotonic() - started < 30  # far less than the 60 s lease
    assert all(n == 1 for n in gauge.runs.values())
    text = caplog.text
    assert "reason=claim_answer_lost" in text
    assert "[WORKER_RESUMED]" in text


@pytest.mark.slow
def test_the_worker_rides_out_a_network_outage(
    pg_proxy,
    pg_database,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.INFO, logger="outlast")
    jobs = Jobs(pg_proxy.dsn(pg_database.name), lease=10)
    direct = Jobs(pg_database.dsn())
    done: list[tuple[int, float]] = []

    @jobs.handler("beat")
    def beat(job: outlast.jobs.Job) -> None:
        done.append((job.payload["n"], time.monotonic()))

    worker = jobs.worker(concurrency=4)
    try:
        with running(worker):
            direct.enqueue("beat", {"n": 0})
            until(lambda: len(done) == 1)
            assert worker.health()["status"] == "pass"
            fault = pg_proxy.add_fault("down")
            pg_proxy.close_connections()
            direct.enqueue_many([NewJob("beat", {"n": n}) for n in range(1, 6)])
            until(lambda: worker.health()["worker"]["database"] == "down", what="paused")
            doc = worker.health()
            assert doc["status"] == "warn" and doc["worker"]["listen"] == "reconnecting"
            time.sleep(2.0)
            assert len(done) == 1  # nothing can run while the database is unreachable
            pg_proxy.remove_fault(fault)
            back = time.monotonic()
            until(lambda: len(done) == 6, what="the backlog after the outage")
            resumed = min(t for n, t in done if n > 0) - back
            until(lambda: worker.health()["status"] == "pass", what="health back to pass")
            assert worker.health()["worker"]["listen"] == "listening"
            # A new job after the outage is picked up through LISTEN again.
            direct.enqueue("beat", {"n": 6})
            until(lambda: len(done) == 7)
    finally:
        jobs.close()
        direct.close()
    assert resumed < 3.0, resumed  # the goal is < 1 s; a loaded CI machine gets slack
    text = caplog.text
    for tag in (
        "[WORKER_PAUSED]",
        "[WORKER_RESUMED]",
        "[WORKER_LISTEN_LOST]",
        "[WORKER_LISTEN_RESTORED]",
    ):
        assert text.count(tag) >= 1, tag
    assert text.count("[WORKER_PAUSED]") == 1  # one line per outage, not one per retry


@pytest.mark.slow
@pytest.mark.destructive
def test_the_worker_rides_out_a_server_restart_with_jobs_running(
    pg_control,
    pg_database,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.WARNING, logger="outlast")
    jobs = Jobs(pg_database.dsn(), limits={"slow": 2}, lease=5)
    gauge = Gauge()
    stop = threading.Event()

    @jobs.handler("slow")
    async def slow(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        await asyncio.sleep(0.3)
        gauge.leave(job)

    jobs.enqueue_many([NewJob("slow", {}, key=f"b{n % 3}") for n in range(30)])
    worker = jobs.worker(concurrency=6)
    try:
        with running(worker):
            until(lambda: len(gauge.done) >= 3)
            pg_control.restart()
            back = time.monotonic()
            until(lambda: len(gauge.done) == 30 and worker.health()["status"] == "pass", timeout=60)
            assert time.monotonic() - back < 60
    finally:
        stop.set()
        jobs.close()
    assert gauge.peak <= 2
    # Jobs that were running across the restart finished in this worker: none ran twice.
    assert all(n == 1 for n in gauge.runs.values())
    assert count(pg_database.dsn()) == 0
    assert rows(pg_database.dsn(), "SELECT count(*) FROM outlast_jobs.slots") == [(0,)]
    assert "[WORKER_RESUMED]" in caplog.text and "[WORKER_LISTEN_RESTORED]" in caplog.text


def test_notify_wakes_a_worker_long_before_its_poll(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, poll_interval=300)
    done = threading.Event()

    @jobs.handler("n")
    def n(job: outlast.jobs.Job) -> None:
        done.set()

    worker = jobs.worker()
    try:
        with running(worker):
            until(lambda: worker.health()["worker"]["listen"] == "listening")
            time.sleep(0.2)  # the first poll is over; only a NOTIFY can wake it now
            jobs.enqueue("n", {})
            assert done.wait(20)
    finally:
        jobs.close()


def test_polling_alone_works_when_listen_is_off(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, listen=False, poll_interval=0.2)
    done = threading.Event()

    @jobs.handler("n")
    def n(job: outlast.jobs.Job) -> None:
        done.set()

    worker = jobs.worker()
    try:
        with running(worker):
            time.sleep(0.3)
            jobs.enqueue("n", {})
            assert done.wait(20)
            assert worker.health()["worker"]["listen"] == "off"
    finally:
        jobs.close()


def test_worker_health_in_a_flask_readiness_endpoint(pg_proxy, pg_database) -> None:  # type: ignore[no-untyped-def]
    from flask import Flask

    from outlast.flask import Outlast

    jobs = Jobs(pg_proxy.dsn(pg_database.name))

    @jobs.handler("n")
    def n(job: outlast.jobs.Job) -> None: ...

    worker = jobs.worker()
    app = Flask(__name__)
    Outlast(app, supervisor=worker)
    client = app.test_client()
    try:
        with running(worker):
            until(lambda: worker.health()["worker"]["listen"] == "listening")
            doc = client.get("/health/ready").get_json()
            assert doc["status"] == "pass"
            names = {c["componentId"] for c in doc["checks"]["supervisor:tasks"]}
            assert names == {"jobs-dispatch", "jobs-heartbeat", "jobs-listen"}
            with pg_proxy.fault("down"):
                pg_proxy.close_connections()
                until(lambda: client.get("/health/ready").get_json()["status"] == "warn")
                assert client.get("/health/ready").status_code == 200  # warn, not unready
            until(lambda: client.get("/health/ready").get_json()["status"] == "pass")
    finally:
        jobs.close()


def test_a_worker_started_while_the_database_is_down_waits_and_stops_on_request() -> None:
    jobs = Jobs("host=127.0.0.1 port=1 user=u password=s3cret dbname=x connect_timeout=2")

    @jobs.handler("n")
    def n(job: outlast.jobs.Job) -> None: ...

    worker = jobs.worker()
    with running(worker, timeout=15):
        time.sleep(1.0)  # several refused connects: retried, never raised
        assert worker.health()["worker"]["database"] == "down"
