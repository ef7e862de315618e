"""`outlast.jobs.Slots` (leased per-key semaphore), ``outlast jobs status``, ``outlast worker``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jobs_kit import count, rows, until

from outlast.jobs import Jobs, NewJob, Slots

HERE = Path(__file__).parent


def test_slots_admit_at_most_limit_holders_per_key(pg_dsn: str) -> None:
    slots = Slots(pg_dsn, "recording", limit=2, poll_interval=0.01)
    lock = threading.Lock()
    now: dict[str, int] = {}
    peak: dict[str, int] = {}
    numbers: set[int] = set()
    errors: list[BaseException] = []

    def holder(key: str) -> None:
        try:
            for _ in range(5):
                with slots.acquire(key, timeout=30) as slot:
                    with lock:
                        now[key] = now.get(key, 0) + 1
                        peak[key] = max(peak.get(key, 0), now[key])
                        numbers.add(slot.number)
                    time.sleep(0.01)
                    with lock:
                        now[key] -= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=holder, args=(f"biz{i % 2}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors
        assert peak == {"biz0": 2, "biz1": 2}
        assert numbers == {1, 2}
        assert rows(pg_dsn, "SELECT count(*) FROM outlast_jobs.leases") == [(0,)]
    finally:
        slots.close()


def test_a_dead_holders_slot_is_taken_over_after_its_lease(pg_dsn: str) -> None:
    dead = Slots(pg_dsn, "rec", limit=1, lease=1.0)
    held = dead.acquire("k")
    dead.close()  # the process "dies": no more heartbeats, no release
    alive = Slots(pg_dsn, "rec", limit=1, lease=1.0, poll_interval=0.05)
    try:
        assert alive.try_acquire("k") is None
        t0 = time.monotonic()
        slot = alive.acquire("k", timeout=10)
        assert 0.3 < time.monotonic() - t0 < 5
        assert slot.number == held.number == 1
        with pytest.raises(TimeoutError):
            alive.acquire("k", timeout=0.2)
        slot.release()
        slot.release()  # idempotent
        assert alive.try_acquire("k") is not None
    finally:
        alive.close()


def test_a_held_slot_outlives_many_leases_while_its_holder_lives(pg_dsn: str) -> None:
    slots = Slots(pg_dsn, "rec", limit=1, lease=1.0)
    other = Slots(pg_dsn, "rec", limit=1, lease=1.0)
    try:
        with slots.acquire("k") as slot:
            time.sleep(2.5)
            assert other.try_acquire("k") is None
            assert not slot.lost
    finally:
        slots.close()
        other.close()


async def test_async_slots(pg_dsn: str) -> None:
    slots = Slots(pg_dsn, "rec", limit=1, lease=1.0, poll_interval=0.01)
    order: list[str] = []

    async def use(name: str) -> None:
        async with await slots.aacquire("k", timeout=10):
            order.append(f"{name}+")
            await asyncio.sleep(0.05)
            order.append(f"{name}-")

    try:
        await asyncio.gather(use("a"), use("b"), use("c"))
        assert [o[-1] for o in order] == ["+", "-"] * 3  # never two at once
        assert await slots.atry_acquire("k") is not None
    finally:
        await slots.aclose()


def test_jobs_status_command(pg_dsn: str) -> None:
    jobs = Jobs(pg_dsn, limits={"recording": 3})
    jobs.enqueue_many([NewJob("recording", {}, key=42) for _ in range(3)])
    jobs.enqueue("mail", {}, run_at=3600)
    dead = jobs.enqueue("mail", {})
    jobs.close()
    rows(
        pg_dsn,
        "UPDATE outlast_jobs.jobs SET state = 'failed', last_error = 'ValueError: boom',"
        " finished_at = now() WHERE id = %s RETURNING id",
        dead,
    )
    out = subprocess.run(
        [sys.executable, "-m", "outlast", "jobs", "status", "--dsn", pg_dsn, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    kinds = {k["kind"]: k for k in doc["kinds"]}
    assert kinds["recording"]["ready"] == 3 and kinds["recording"]["oldest_ready_age"] >= 0
    assert kinds["mail"]["scheduled"] == 1 and kinds["mail"]["dead"] == 1
    assert doc["dead_letters"][0]["id"] == dead
    assert doc["dead_letters"][0]["error"] == "ValueError: boom"
    text = subprocess.run(
        [sys.executable, "-m", "outlast", "jobs", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=dict(os.environ, OUTLAST_DSN=pg_dsn),
    ).stdout
    assert "recording" in text and "dead letters" in text
    env = {k: v for k, v in os.environ.items() if k not in ("OUTLAST_DSN", "DATABASE_URL")}
    none = subprocess.run(
        [sys.executable, "-m", "outlast", "jobs", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert none.returncode == 2 and "no DSN" in none.stderr
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "outlast",
            "jobs",
            "status",
            "--dsn",
            "host=127.0.0.1 port=1 user=u password=s3cret dbname=x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert down.returncode == 1 and "s3cret" not in down.stderr + down.stdout


@pytest.mark.slow
def test_outlast_worker_command_runs_jobs_and_stops_on_sigterm(pg_dsn: str, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    jobs = Jobs(pg_dsn, limits={"quick": 2})
    jobs.enqueue_many([NewJob("quick", {}, key=n % 3) for n in range(20)])
    env = dict(os.environ, JOBS_TEST_DSN=pg_dsn, JOBS_TEST_MARKS=str(marks))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outlast",
            "worker",
            "worker_app:jobs",
            "--concurrency",
            "4",
            "--kinds",
            "quick",
        ],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        until(lambda: count(pg_dsn) == 0, what="20 jobs done")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        jobs.close()
    assert proc.returncode == 0
    log = err.decode()
    assert log.count("[WORKER_PICKED] job_type=quick") == 20
    assert log.count("[WORKER_SLOT_ACQUIRED]") == 20
    assert log.count("[WORKER_RELEASE_SLOT]") == 20 and "reason=success" in log
    assert "[WORKER_STOP] signal=SIGTERM" in log and "[WORKER_STOPPED]" in log
    assert marks.read_text().count("quick") == 20


def test_outlast_worker_command_rejects_a_bad_target(tmp_path: Path) -> None:
    for target, message in (
        ("nomodule", "package.module:jobs"),
        ("json:dumps", "not an outlast.jobs.Jobs"),
        ("json:nothing", "no attribute"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "outlast", "worker", target],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
        assert out.returncode == 2 and message in out.stderr, (target, out.stderr)
