"""The circuit breaker, driven through a Guard with a fake clock (pure logic)."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from datetime import timedelta

import pytest
from guard_kit import FakeDbError, Flaky, Recorder, err, make_guard

import outlast
from outlast import Breaker, DatabaseUnavailable, FaultKind, Retry
from outlast.testing import ManualClock

ONCE = Retry(attempts=1)


def _fail(guard: outlast.Guard, n: int = 1) -> None:
    for _ in range(n):
        with pytest.raises((FakeDbError, DatabaseUnavailable)):
            guard.call(Flaky(err()))


def test_opens_after_consecutive_failures_and_then_fails_fast_without_calling() -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(clock, recorder=rec, retry=ONCE, breaker=Breaker(failure_threshold=3))
    _fail(guard, 2)
    assert guard.breaker_state == "closed"
    _fail(guard)
    assert guard.breaker_state == "open"
    fn = Flaky()
    with pytest.raises(DatabaseUnavailable) as info:
        guard.call(fn)
    assert fn.calls == 0
    assert info.value.retry_after == pytest.approx(1.0)
    assert info.value.fault is not None and info.value.fault.reason == "connection_refused"
    (opened,) = rec.of(outlast.BreakerOpened)
    assert (opened.open_for, opened.trips) == (1.0, 1)
    with pytest.raises(DatabaseUnavailable):
        guard.check()
    assert 0 < guard.retry_after <= 1.0


def test_a_success_resets_the_consecutive_count() -> None:
    guard = make_guard(retry=ONCE, breaker=Breaker(failure_threshold=3, failure_rate=1.0))
    for _ in range(5):
        _fail(guard, 2)
        assert guard.call(lambda: 1) == 1
    assert guard.breaker_state == "closed"


def test_opens_on_failure_rate_over_the_window_with_a_minimum_of_calls() -> None:
    clock = ManualClock()
    breaker = Breaker(failure_threshold=100, failure_rate=0.5, window=10.0, min_calls=8)
    guard = make_guard(clock, retry=ONCE, breaker=breaker)
    # Alternate failure/success: never 2 consecutive failures, rate 50 %.
    for i in range(3):
        _fail(guard)
        guard.call(lambda: None)
        assert guard.breaker_state == "closed", i  # fewer than 8 calls in the window
    _fail(guard)  # 7 calls, 4 failures
    assert guard.breaker_state == "closed"
    guard.call(lambda: None)
    _fail(guard)  # 9 calls, 5 failures >= 50 %
    assert guard.breaker_state == "open"


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = ManualClock()
    breaker = Breaker(failure_threshold=100, failure_rate=0.5, window=10.0, min_calls=4)
    guard = make_guard(clock, retry=ONCE, breaker=breaker)
    for _ in range(3):
        _fail(guard)
        guard.call(lambda: None)
        clock.advance(11.0)
    assert guard.breaker_state == "closed"


def test_many_healthy_calls_before_the_first_failure_keep_the_rate_low() -> None:
    clock = ManualClock()
    breaker = Breaker(failure_threshold=100, failure_rate=0.5, window=10.0, min_calls=4)
    guard = make_guard(clock, retry=ONCE, breaker=breaker)
    for _ in range(100):
        guard.call(lambda: None)
        clock.advance(0.05)  # 100 calls over 5 s, all inside the window
    _fail(guard, 4)
    assert guard.breaker_state == "closed"  # 4 failures out of ~104 calls


def test_half_open_admits_one_probe_and_closes_on_success() -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(clock, recorder=rec, retry=ONCE, breaker=Breaker(failure_threshold=1))
    _fail(guard)
    clock.advance(1.0)
    assert guard.breaker_state == "half_open"
    others: list[str] = []

    def probe() -> str:
        # While the probe runs, everybody else fails fast.
        with pytest.raises(DatabaseUnavailable):
            guard.call(lambda: others.append("ran"))
        # check() from elsewhere is refused; inside the probe itself (a pool
        # hook on the probe's own connection) it must let the probe through.
        seen: list[BaseException] = []
        t = threading.Thread(target=lambda: _capture(guard.check, seen))
        t.start()
        t.join(5)
        assert len(seen) == 1 and isinstance(seen[0], DatabaseUnavailable)
        guard.check()
        assert guard.retry_after > 0
        return "probed"

    assert guard.call(probe) == "probed"
    assert others == []
    assert guard.breaker_state == "closed" and guard.state.up
    assert rec.names()[-3:] == ["BreakerHalfOpen", "BreakerClosed", "DatabaseRecovered"]
    assert rec.of(outlast.BreakerClosed)[0].opened_for == pytest.approx(1.0)


def test_a_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    clock, rec = ManualClock(), Recorder()
    breaker = Breaker(failure_threshold=1, open_for=1.0, max_open_for=5.0, open_multiplier=2.0)
    guard = make_guard(clock, recorder=rec, retry=Retry(attempts=5), breaker=breaker)
    _fail(guard)
    for expected in (2.0, 4.0, 5.0, 5.0):
        clock.advance(guard.retry_after)
        fn = Flaky(err(), err())
        with pytest.raises(DatabaseUnavailable):  # a probe is never retried
            guard.call(fn, idempotent=True)
        assert fn.calls == 1
        assert guard.retry_after == pytest.approx(expected)
    assert [e.open_for for e in rec.of(outlast.BreakerOpened)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    clock.advance(5.0)
    guard.call(lambda: None)
    _fail(guard)  # after a close, the period starts small again
    assert guard.retry_after == pytest.approx(1.0)


def test_a_probe_that_raises_a_non_database_error_frees_the_slot() -> None:
    clock = ManualClock()
    guard = make_guard(clock, retry=ONCE, breaker=Breaker(failure_threshold=1))
    _fail(guard)
    clock.advance(1.0)
    with pytest.raises(KeyError):
        guard.call(Flaky(KeyError("bug")))
    assert guard.breaker_state == "half_open"
    assert guard.call(lambda: 3) == 3
    assert guard.breaker_state == "closed"


async def test_a_cancelled_async_probe_frees_the_slot() -> None:
    clock = ManualClock()
    guard = make_guard(clock, retry=ONCE, breaker=Breaker(failure_threshold=1))
    _fail(guard)
    clock.advance(1.0)
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.sleep(3600)

    probe = asyncio.create_task(guard.acall(hangs))
    await asyncio.wait_for(started.wait(), 10)

    async def quick() -> int:
        return 1

    with pytest.raises(DatabaseUnavailable):  # the probe holds the slot
        await guard.acall(quick)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await guard.acall(quick) == 1  # the next caller could probe
    assert guard.breaker_state == "closed"


def test_a_stuck_probe_is_replaced_after_probe_timeout() -> None:
    clock = ManualClock()
    breaker = Breaker(failure_threshold=1, probe_timeout=timedelta(seconds=30))
    guard = make_guard(clock, retry=ONCE, breaker=breaker)
    _fail(guard)
    clock.advance(1.0)

    def stuck() -> str:
        with pytest.raises(DatabaseUnavailable):
            guard.call(lambda: None)
        clock.advance(30.0)  # the probe has now run for probe_timeout
        return guard.call(lambda: "second probe")

    assert guard.call(stuck) == "second probe"
    assert guard.breaker_state == "closed"


@pytest.mark.parametrize(
    ("kind", "counted"),
    [
        (FaultKind.UNAVAILABLE, True),
        (FaultKind.READ_ONLY, True),
        (FaultKind.COMMIT_UNKNOWN, True),
        (FaultKind.TIMEOUT, False),
        (FaultKind.CONFLICT, False),
        (FaultKind.PERMANENT, False),
    ],
)
def test_only_faults_that_mean_the_database_is_unwell_count(kind: FaultKind, counted: bool) -> None:
    guard = make_guard(retry=ONCE, breaker=Breaker(failure_threshold=2))
    for _ in range(2):
        with pytest.raises((FakeDbError, DatabaseUnavailable)):
            guard.call(Flaky(err(kind, phase="commit")))
    assert (guard.breaker_state == "open") is counted


def test_timeouts_count_when_configured() -> None:
    guard = make_guard(retry=ONCE, breaker=Breaker(failure_threshold=2, count_timeouts=True))
    for _ in range(2):
        with pytest.raises(FakeDbError):
            guard.call(Flaky(err(FaultKind.TIMEOUT, phase="statement")))
    assert guard.breaker_state == "open"


def test_a_disabled_breaker_never_opens_but_state_is_tracked() -> None:
    guard = make_guard(retry=ONCE, breaker=Breaker(failure_threshold=1, enabled=False))
    _fail(guard, 10)
    assert guard.breaker_state == "closed" and guard.state.down and guard.state.failures == 10


def test_record_failure_and_record_success_from_outside_call() -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(clock, recorder=rec, breaker=Breaker(failure_threshold=2))
    assert guard.record_failure(ValueError("not a db error")) is None
    assert guard.state.failures == 0
    fault = guard.record_failure(err(), op="pool.connect")
    assert fault is not None and fault.reason == "connection_refused"
    assert guard.state.down and guard.breaker_state == "closed"
    guard.record_failure(err(), op="pool.connect")
    assert guard.breaker_state == "open"
    with pytest.raises(DatabaseUnavailable):
        guard.check()
    clock.advance(1.0)
    guard.check()  # a probe would be admitted now
    guard.record_success(op="pool.check")
    assert guard.breaker_state == "closed" and guard.state.up
    assert rec.of(outlast.DatabaseDown)[0].op == "pool.connect"
    assert rec.of(outlast.DatabaseRecovered)[0].op == "pool.check"


def test_open_rejection_is_cheap_with_the_real_clock() -> None:
    guard = outlast.Guard(
        "cheap",
        classifier=lambda e: e.fault if isinstance(e, FakeDbError) else None,
        retry=ONCE,
        breaker=Breaker(failure_threshold=1, open_for=60, max_open_for=60),
        listeners=[],
    )
    with pytest.raises(DatabaseUnavailable):
        guard.call(Flaky(err()))
    fn = Flaky()
    start = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(DatabaseUnavailable):
            guard.call(fn)
    assert fn.calls == 0
    assert time.perf_counter() - start < 2.0  # generous: the benchmark measures the real cost


def _capture(fn: object, into: list[BaseException]) -> None:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        into.append(exc)


@pytest.mark.parametrize("path", ["call", "acall", "check", "retrying"])
def test_a_fast_rejection_is_an_ordinary_database_unavailable(path: str) -> None:
    # The open-breaker path builds its error without __init__ (it is hot); the
    # result must be indistinguishable from one built the normal way.
    clock = ManualClock()
    guard = make_guard(clock, retry=ONCE, breaker=Breaker(failure_threshold=1, open_for=4.0))
    _fail(guard)
    clock.advance(1.5)
    fn = Flaky()
    with pytest.raises(DatabaseUnavailable) as info:
        if path == "call":
            guard.call(fn)
        elif path == "acall":

            async def afn() -> None:
                fn()

            asyncio.run(guard.acall(afn))
        elif path == "check":
            guard.check()
        else:
            guard.retrying(fn)()
    error = info.value
    assert fn.calls == 0
    assert type(error) is DatabaseUnavailable
    assert error.args == ("database unavailable: circuit breaker open",)
    assert error.retry_after == pytest.approx(2.5)
    assert error.guard == "test"
    assert error.fault is not None and error.fault == guard.state.last_fault
    twin = DatabaseUnavailable(
        str(error), retry_after=error.retry_after, fault=error.fault, guard=error.guard
    )
    assert repr(error) == repr(twin)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.args, copy.retry_after, copy.fault, copy.guard) == (
        DatabaseUnavailable,
        error.args,
        error.retry_after,
        error.fault,
        error.guard,
    )


@pytest.mark.parametrize("cls", [outlast.DatabaseNotReady, outlast.RequestBudgetExceeded])
def test_database_unavailable_subclasses_survive_pickling(cls: type[DatabaseUnavailable]) -> None:
    error = cls("gave up", retry_after=3.0, guard="main")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.args, copy.retry_after, copy.guard, copy.fault) == (
        ("gave up",),
        3.0,
        "main",
        None,
    )


def test_open_jitter_shortens_each_open_period_within_its_share() -> None:
    breaker = Breaker(open_for=1.0, max_open_for=4.0, open_jitter=0.5)
    assert breaker.jittered_open_period(1, 0.0) == pytest.approx(1.0)  # never longer
    assert breaker.jittered_open_period(1, 0.999) == pytest.approx(0.5005)
    assert breaker.jittered_open_period(3, 0.5) == pytest.approx(3.0)  # 4 s, shortened by 25 %
    assert breaker.jittered_open_period(9, 0.0) == pytest.approx(4.0)  # the cap is the worst case
    assert Breaker(open_for=1.0).jittered_open_period(1, 0.7) == pytest.approx(1.0)  # no jitter


def test_breakers_that_trip_together_probe_at_different_moments() -> None:
    """A fleet: every worker's Guard trips on the same outage at the same instant."""
    import random

    from outlast._core.guard.breaker import BreakerCore

    policy = Breaker(failure_threshold=1, open_for=0.5, max_open_for=1.0, open_jitter=0.5)
    draws = random.Random(7)
    cores = [BreakerCore(policy, draws.random) for _ in range(16)]
    for core in cores:
        core.on_failure(100.0)
    probes = sorted(core.open_until for core in cores)
    assert all(100.25 <= t <= 100.5 for t in probes)
    assert probes[-1] - probes[0] > 0.1  # spread, not one burst of 16 logins
    same = [BreakerCore(Breaker(failure_threshold=1, open_for=0.5)) for _ in range(16)]
    for core in same:
        core.on_failure(100.0)
    assert {core.open_until for core in same} == {100.5}  # without jitter: all at once


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, True, "0.5"])
def test_open_jitter_must_be_a_share_below_one(bad: object) -> None:
    with pytest.raises(outlast.ConfigurationError, match="open_jitter"):
        Breaker(open_jitter=bad)  # type: ignore[arg-type]


def test_a_guard_with_open_jitter_reopens_for_a_jittered_period() -> None:
    clock, rec = ManualClock(), Recorder()
    breaker = Breaker(failure_threshold=1, open_for=1.0, max_open_for=1.0, open_jitter=0.5)
    guard = make_guard(clock, recorder=rec, retry=ONCE, breaker=breaker)
    seen = set()
    for _ in range(20):
        _fail(guard)
        seen.add(round(guard.retry_after, 6))
        assert 0.5 <= guard.retry_after <= 1.0
        clock.advance(guard.retry_after)
        guard.call(lambda: None)  # the probe closes it
    assert len(seen) > 1
