"""Helpers for the job-queue tests: a worker in its own event-loop thread, waits, counters."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

import outlast.jobs

WAIT = 30.0


def until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextmanager
def running(worker: outlast.jobs.Worker, timeout: float = WAIT) -> Iterator[outlast.jobs.Worker]:
    """Run `worker.arun()` in a thread with its own loop; stop and join it afterwards."""
    box: dict[str, Any] = {}
    started = threading.Event()

    def main() -> None:
        async def go() -> None:
            box["loop"] = asyncio.get_running_loop()
            started.set()
            await worker.arun()

        try:
            asyncio.run(go())
        except BaseException as exc:  # reported by the test
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="test-worker", daemon=True)
    thread.start()
    assert started.wait(WAIT)
    try:
        yield worker
    finally:
        until(lambda: worker._loop is not None or "error" in box, what="worker start")
        worker.stop()
        thread.join(timeout)
        assert not thread.is_alive(), "the worker did not stop"
        if "error" in box:
            raise box["error"]


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(sql, params).fetchall())


def count(dsn: str, where: str = "true", *params: Any) -> int:
    return int(rows(dsn, f"SELECT count(*) FROM outlast_jobs.jobs WHERE {where}", *params)[0][0])


class Gauge:
    """Running handlers per key, and the most ever seen at once (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[Any, int] = {}
        self.most: dict[Any, int] = {}
        self.done: list[int] = []
        self.runs: dict[int, int] = {}

    def enter(self, job: outlast.jobs.Job) -> None:
        with self.lock:
            self.now[job.key] = self.now.get(job.key, 0) + 1
            self.most[job.key] = max(self.most.get(job.key, 0), self.now[job.key])
            self.runs[job.id] = self.runs.get(job.id, 0) + 1

    def leave(self, job: outlast.jobs.Job) -> None:
        with self.lock:
            self.now[job.key] -= 1
            self.done.append(job.id)

    @property
    def peak(self) -> int:
        with self.lock:
            return max(self.most.values(), default=0)
