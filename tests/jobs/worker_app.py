"""A queue for ``outlast worker worker_app:jobs`` in the tests (configured by environment)."""

from __future__ import annotations

import asyncio
import os
import time

import outlast.jobs

jobs = outlast.jobs.Jobs(
    os.environ["JOBS_TEST_DSN"],
    limits={"hold": 2, "quick": 2},
    lease=float(os.environ.get("JOBS_TEST_LEASE", "30")),
)
MARKS = os.environ.get("JOBS_TEST_MARKS")


def _mark(line: str) -> None:
    if MARKS:
        fd = os.open(MARKS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{line} {time.monotonic_ns()}\n".encode())
        finally:
            os.close(fd)


@jobs.handler("hold")
async def hold(job: outlast.jobs.Job) -> None:
    _mark(f"start {job.id} {os.getpid()}")
    await asyncio.sleep(3600)  # until the process is killed


@jobs.handler("quick")
def quick(job: outlast.jobs.Job) -> None:
    _mark(f"quick {job.id} {os.getpid()}")
    time.sleep(0.01)
