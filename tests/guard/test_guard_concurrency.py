"""One Guard shared by 32 threads, then by 1,000 asyncio tasks, while the database flaps.

The "database" is a shared flag: while it says down, the operation raises a
connection-refused fault. The checks: every call ends in exactly one outcome,
the Guard's counters match what really happened, exactly one half-open probe
runs at a time, and nobody waits for the probe (threads: the slowest rejection;
tasks: while a probe is held inside its call, 999 others are rejected without
suspending, in loop time).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time

from guard_kit import Recorder, classify, err

import outlast
from outlast import Backoff, Breaker, DatabaseUnavailable, Retry

FLAPS = 8
PHASE = 0.04  # seconds down, then seconds up, per flap


def _guard(rec: Recorder) -> outlast.Guard:
    return outlast.Guard(
        "flappy",
        retry=Retry(attempts=3, timeout=1.0, backoff=Backoff(initial=0.001, cap=0.004)),
        breaker=Breaker(failure_threshold=5, open_for=0.005, max_open_for=0.02),
        classifier=classify,
        listeners=[rec],  # no logging: thousands of lines would only slow the test
    )


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.raised = 0  # faults the operation actually raised
        self.inside_probe = 0
        self.max_probe = 0
        self.probes = 0

    def probe_enter(self) -> None:
        with self.lock:
            self.probes += 1
            self.inside_probe += 1
            self.max_probe = max(self.max_probe, self.inside_probe)

    def probe_exit(self) -> None:
        with self.lock:
            self.inside_probe -= 1

    def fault(self) -> None:
        with self.lock:
            self.raised += 1


def _check_consistency(guard: outlast.Guard, rec: Recorder, tally: Tally, outcomes: dict) -> None:
    state = guard.state
    assert state.up and state.breaker == "closed"
    assert state.failures == tally.raised > 0  # every raised fault counted exactly once
    assert outcomes["ok"] > 0 and outcomes["unavailable"] > 0 and outcomes["other"] == 0
    assert tally.probes >= 2 and tally.max_probe == 1  # one probe at a time, never two
    assert state.outages == len(rec.of(outlast.DatabaseDown)) >= 2
    assert len(rec.of(outlast.DatabaseRecovered)) == state.outages
    opened, closed = len(rec.of(outlast.BreakerOpened)), len(rec.of(outlast.BreakerClosed))
    assert opened >= closed >= 2
    assert len(rec.of(outlast.BreakerHalfOpen)) == tally.probes


def test_32_threads_share_one_guard_through_a_flapping_database() -> None:
    rec, tally = Recorder(), Tally()
    guard = _guard(rec)
    down = threading.Event()
    stop = threading.Event()
    local = threading.local()
    guard.add_listener(
        lambda e: setattr(local, "probe", True) if isinstance(e, outlast.BreakerHalfOpen) else None
    )

    def op() -> int:
        if getattr(local, "probe", False):
            local.probe = False
            tally.probe_enter()
            try:
                time.sleep(0.002)  # others must fail fast meanwhile, not wait
                if down.is_set():
                    tally.fault()
                    raise err()
                return 1
            finally:
                tally.probe_exit()
        if down.is_set():
            tally.fault()
            raise err()
        return 1

    outcomes = {"ok": 0, "unavailable": 0, "other": 0, "calls": 0}
    slowest_rejection = [0.0]
    outcome_lock = threading.Lock()

    def worker() -> None:
        mine = {"ok": 0, "unavailable": 0, "other": 0, "calls": 0}
        slowest = 0.0
        while not stop.is_set():
            mine["calls"] += 1
            started = time.perf_counter()
            try:
                guard.call(op)
                mine["ok"] += 1
            except DatabaseUnavailable:
                mine["unavailable"] += 1
                slowest = max(slowest, time.perf_counter() - started)
            except Exception:
                mine["other"] += 1
            time.sleep(0.0005)
        with outcome_lock:
            for key, value in mine.items():
                outcomes[key] += value
            slowest_rejection[0] = max(slowest_rejection[0], slowest)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(32)]
    for t in threads:
        t.start()
    for _ in range(FLAPS):
        down.set()
        time.sleep(PHASE)
        down.clear()
        time.sleep(PHASE)
    deadline = time.monotonic() + 30
    while guard.breaker_state != "closed" or guard.state.down:
        assert time.monotonic() < deadline, guard.state
        time.sleep(0.01)
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive()

    assert outcomes["calls"] == outcomes["ok"] + outcomes["unavailable"] + outcomes["other"]
    _check_consistency(guard, rec, tally, outcomes)
    # Nobody blocked: the worst rejection took far less than a whole flap (generous bound).
    assert slowest_rejection[0] < 1.0


async def test_1000_tasks_share_one_guard_through_a_flapping_database() -> None:
    rec, tally = Recorder(), Tally()
    guard = _guard(rec)
    down = stop = False
    probing: contextvars.ContextVar[bool] = contextvars.ContextVar("probing", default=False)
    guard.add_listener(
        lambda e: probing.set(True) if isinstance(e, outlast.BreakerHalfOpen) else None
    )

    async def op() -> int:
        if probing.get():
            probing.set(False)
            tally.probe_enter()
            try:
                await asyncio.sleep(0.002)
                if down:
                    tally.fault()
                    raise err()
                return 1
            finally:
                tally.probe_exit()
        await asyncio.sleep(0)
        if down:
            tally.fault()
            raise err()
        return 1

    outcomes = {"ok": 0, "unavailable": 0, "other": 0, "calls": 0}

    async def worker() -> None:
        while not stop:
            outcomes["calls"] += 1
            try:
                await guard.acall(op)
                outcomes["ok"] += 1
            except DatabaseUnavailable:
                outcomes["unavailable"] += 1
            except Exception:
                outcomes["other"] += 1
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(worker()) for _ in range(1000)]
    for _ in range(FLAPS):
        down = True
        await asyncio.sleep(PHASE)
        down = False
        await asyncio.sleep(PHASE)
    deadline = time.monotonic() + 30
    while guard.breaker_state != "closed" or guard.state.down:
        assert time.monotonic() < deadline, guard.state
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    stop = True
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    assert outcomes["calls"] == outcomes["ok"] + outcomes["unavailable"] + outcomes["other"]
    _check_consistency(guard, rec, tally, outcomes)


async def test_a_slow_half_open_probe_blocks_none_of_1000_tasks() -> None:
    # One task is the half-open probe and stays inside the database call (awaiting)
    # until the test lets it go. Meanwhile 999 other tasks call the Guard: each is
    # rejected at once, in loop time, without suspending (the loop runs nothing
    # else during a rejection), and all of them are done before the probe is.
    rec = Recorder()
    guard = outlast.Guard(
        "slow-probe",
        retry=Retry(attempts=1),
        breaker=Breaker(failure_threshold=1, open_for=0.05, max_open_for=0.05),
        classifier=classify,
        listeners=[rec],
    )

    async def refused() -> None:
        raise err()

    with contextlib.suppress(DatabaseUnavailable):
        await guard.acall(refused)
    assert guard.breaker_state == "open"
    await asyncio.sleep(0.06)
    assert guard.breaker_state == "half_open"

    loop = asyncio.get_running_loop()
    release, inside = asyncio.Event(), asyncio.Event()
    ticks = 0

    async def ticker() -> None:  # counts loop iterations: proof of (no) suspension
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def slow_probe() -> str:
        inside.set()
        await release.wait()
        return "probe ok"

    ran = 0

    async def must_not_run() -> None:
        nonlocal ran
        ran += 1

    durations: list[float] = []
    suspended = 0

    async def other() -> float:
        nonlocal suspended
        await asyncio.sleep(0)  # start the 999 interleaved with each other and the ticker
        before, start = ticks, loop.time()
        try:
            await guard.acall(must_not_run)
        except DatabaseUnavailable as exc:
            durations.append(loop.time() - start)
            suspended += ticks != before
            return exc.retry_after
        raise AssertionError("a second call was let through while the probe ran")

    tick_task = asyncio.create_task(ticker())
    probe = asyncio.create_task(guard.acall(slow_probe))
    await inside.wait()
    # A rejection that waited for the probe would hang here: fail instead.
    retry_afters = await asyncio.wait_for(asyncio.gather(*(other() for _ in range(999))), 10)
    assert not probe.done()  # the probe is still in its database call
    assert ran == 0 and len(durations) == 999
    assert suspended == 0  # no rejection waited for anything
    assert max(durations) < 0.02  # microseconds of work each; generous for a loaded machine
    assert all(0 < r <= 0.05 for r in retry_afters)  # half-open, busy: come back soon
    assert guard.breaker_state == "half_open"

    release.set()
    assert await probe == "probe ok"
    assert guard.breaker_state == "closed"
    assert await guard.acall(lambda: asyncio.sleep(0, "flowing")) == "flowing"
    assert len(rec.of(outlast.BreakerHalfOpen)) == 1
    tick_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tick_task
