"""Helpers for the connection tests: traffic loops, restarts under traffic, hang checks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import outlast


@dataclass
class Outcome:
    started: float
    ok: bool
    fault: outlast.Fault | None = None
    error: str = ""


@dataclass
class Traffic:
    """Runs `request` in a loop on a few threads, recording every outcome."""

    request: Callable[[], object]
    threads: int = 3
    pause: float = 0.02
    outcomes: list[Outcome] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _busy: int = 0  # requests running now
    _paused: bool = False

    def start(self) -> Traffic:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"traffic-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _enter(self) -> bool:
        """Wait until requests may start; False once stopped."""
        with self._cond:
            while self._paused and not self._stop.is_set():
                self._cond.wait(0.1)
            if self._stop.is_set():
                return False
            self._busy += 1
            return True

    def _leave(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def between_requests(self) -> Iterator[None]:
        """No request is running inside the block; new ones wait until it ends."""
        with self._cond:
            self._paused = True
            while self._busy:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    def _run(self) -> None:
        while self._enter():
            started = time.monotonic()
            self.starts.append(started)
            try:
                self._one(started)
            finally:
                self._leave()
            self._stop.wait(self.pause)

    def _one(self, started: float) -> None:
        try:
            self.request()
        except Exception as error:
            fault = outlast.classify(error)
            if fault is None and isinstance(error, outlast.DatabaseUnavailable):
                fault = error.fault
                error_text = "DatabaseUnavailable"
            else:
                error_text = type(error).__name__
            self.outcomes.append(Outcome(started, False, fault, error_text))
        else:
            self.outcomes.append(Outcome(started, True))

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        assert not any(w.is_alive() for w in self._workers), "traffic threads did not stop"

    def successes_after(self, t: float) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.started >= t)

    def started_after(self, t: float) -> int:
        return sum(1 for s in self.starts if s >= t)

    def stale_failures(self) -> list[Outcome]:
        """Failures on an existing connection (not 'the server is down while connecting')."""
        return [
            o
            for o in self.outcomes
            if not o.ok
            and not (o.error == "DatabaseUnavailable" or (o.fault and o.fault.phase == "connect"))
        ]


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


@dataclass
class Restart:
    """What `restart_under_traffic` saw: the traffic and when the server was down / up."""

    traffic: Traffic
    down_at: float
    up_at: float


def restart_under_traffic(pg_control: Any, request: Callable[[], object]) -> Restart:
    """Stop and start the server under steady traffic from three threads.

    The server is stopped (fast shutdown: every backend is terminated) between
    two requests: none is in flight at that instant, since no pool could save
    a statement the server is killed under. A few requests start while it is
    down, then it is started again and the traffic runs until 30 requests
    succeeded. Every request of the run counts, for a hardened and a plain
    client alike: one that failed on a pooled connection met a stale one.
    """
    traffic = Traffic(request, threads=3).start()
    try:
        assert wait_until(lambda: traffic.successes_after(0) >= 20, 30), "no warm traffic"
        with traffic.between_requests():
            pg_control.stop()
            down_at = time.monotonic()  # before any request can start again
        assert wait_until(lambda: traffic.started_after(down_at) >= 3, 30), "traffic stalled"
        pg_control.start()
        up_at = time.monotonic()
        wait_until(lambda: traffic.successes_after(up_at) >= 30, 60)
    finally:
        traffic.stop()
    return Restart(traffic, down_at, up_at)


class Hang:
    """Runs a blocking call (or a coroutine on its own loop) in a daemon thread."""

    def __init__(
        self, call: Callable[[], object] | Callable[[], Coroutine[Any, Any, object]]
    ) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._call = call
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            result = self._call()
            if asyncio.iscoroutine(result):
                asyncio.run(result)
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()
