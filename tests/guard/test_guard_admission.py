"""`Guard.admit`: one half-open probe at a time for work outside `Guard.call` (pure logic).

A web request that queries through the ORM is admitted once, before its view
runs. These tests drive the Guard with a fake clock and fake faults: the
probe is exclusive, its end gives the breaker's verdict exactly once (never
on top of what the work's own calls reported), and every way out of the work
frees the slot.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from guard_kit import FakeDbError, Flaky, Recorder, err, make_guard

import outlast
from outlast import Breaker, DatabaseUnavailable, FaultKind, Retry
from outlast.testing import ManualClock

ONCE = Retry(attempts=1)
OPEN_FOR = 1.0


def _half_open(rec: Recorder | None = None, **breaker: object) -> tuple[outlast.Guard, ManualClock]:
    """A Guard whose breaker tripped once and whose open period has just elapsed."""
    clock = ManualClock()
    options = {"failure_threshold": 1, "open_for": OPEN_FOR, "max_open_for": 8.0, **breaker}
    guard = make_guard(clock, recorder=rec, retry=ONCE, breaker=Breaker(**options))  # type: ignore[arg-type]
    guard.record_failure(err())
    assert guard.breaker_state == "open"
    clock.advance(OPEN_FOR)
    assert guard.breaker_state == "half_open"
    return guard, clock


def _rejected(guard: outlast.Guard) -> bool:
    """Would a caller in a fresh context be turned away right now?"""

    def attempt() -> bool:
        try:
            guard.admit(op="other").release()
        except DatabaseUnavailable:
            return True
        return False

    return contextvars.Context().run(attempt)


def test_a_closed_breaker_admits_with_one_shared_admission_that_holds_nothing() -> None:
    guard = make_guard(retry=ONCE)
    first, second = guard.admit(op="a"), guard.admit(op="b")
    assert first is second  # nothing allocated on the closed path
    assert not first.probe
    with first:
        guard.check()
    first.release(err())  # the shared admission gives no verdict
    assert guard.state.up and guard.state.failures == 0


def test_an_open_breaker_rejects_at_once_with_retry_after() -> None:
    clock = ManualClock()
    guard = make_guard(clock, retry=ONCE, breaker=Breaker(failure_threshold=1, open_for=4.0))
    guard.record_failure(err())
    clock.advance(1.0)
    with pytest.raises(DatabaseUnavailable) as info:
        guard.admit(op="view")
    assert info.value.retry_after == pytest.approx(3.0)
    assert info.value.fault is not None and info.value.fault.reason == "connection_refused"


def test_half_open_admits_one_probe_and_rejects_everyone_else_meanwhile() -> None:
    rec = Recorder()
    guard, _ = _half_open(rec)
    probe = guard.admit(op="GET /leads")
    assert probe.probe
    for _ in range(50):
        assert _rejected(guard)
    (half_open,) = rec.of(outlast.BreakerHalfOpen)
    assert half_open.op == "GET /leads"
    probe.release()
    assert guard.breaker_state == "closed" and guard.state.up
    assert not _rejected(guard)
    assert [type(e).__name__ for e in rec.events].count("BreakerClosed") == 1
    assert len(rec.of(outlast.DatabaseRecovered)) == 1


def test_checks_and_calls_inside_the_probe_pass_and_its_own_success_is_not_counted_twice() -> None:
    rec = Recorder()
    guard, _ = _half_open(rec)
    with guard.admit(op="view") as probe:
        guard.check()  # a hardened pool's checkout hook
        assert guard.call(lambda: "row") == "row"  # web.call inside the view
        # The nested call's success settled the probe already.
        assert guard.breaker_state == "closed"
        assert probe.probe  # still to be released
    assert not probe.probe
    assert len(rec.of(outlast.BreakerClosed)) == 1
    assert len(rec.of(outlast.DatabaseRecovered)) == 1


def test_a_fault_escaping_the_probe_opens_the_breaker_again_for_longer() -> None:
    rec = Recorder()
    guard, _ = _half_open(rec)
    failures = guard.state.failures
    error = err()
    with pytest.raises(FakeDbError), guard.admit(op="view"):
        raise error
    assert guard.breaker_state == "open"
    opened = rec.of(outlast.BreakerOpened)
    assert [(e.trips, e.open_for) for e in opened] == [(1, OPEN_FOR), (2, 2 * OPEN_FOR)]
    assert guard.state.failures == failures + 1
    # The web layer reports the same exception afterwards: not a second failure.
    guard.record_failure(error, op="GET /leads")
    assert guard.state.failures == failures + 1


def test_a_fault_a_hook_already_reported_is_not_counted_again_at_release() -> None:
    guard, _ = _half_open()
    failures = guard.state.failures
    error = err()
    probe = guard.admit(op="view")
    guard.record_failure(error, op="pool")  # the engine's error hook, inside the view
    assert guard.breaker_state == "open"
    probe.release(error)
    assert guard.state.failures == failures + 1


def test_a_success_after_a_hook_reopened_the_breaker_does_not_close_it() -> None:
    guard, _ = _half_open()
    probe = guard.admit(op="view")
    guard.record_failure(err(), op="pool")
    probe.release()  # the view caught the error and answered 200 anyway
    assert guard.breaker_state == "open"


def test_a_nested_call_that_fails_settles_the_probe_once() -> None:
    guard, _ = _half_open()
    failures = guard.state.failures
    probe = guard.admit(op="view")
    with pytest.raises(DatabaseUnavailable) as info:
        guard.call(Flaky(err()))  # web.call inside the view gives up: a 503
    assert guard.breaker_state == "open"
    probe.release(info.value)
    assert guard.state.failures == failures + 1


def test_a_conflict_escaping_the_probe_proves_the_database_answered() -> None:
    guard, _ = _half_open()
    with pytest.raises(FakeDbError), guard.admit():
        raise err(FaultKind.CONFLICT, reason="serialization_failure", phase="statement")
    assert guard.breaker_state == "closed" and guard.state.up


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RuntimeError("a bug in the view"), id="unrelated"),
        pytest.param(asyncio.CancelledError(), id="cancelled"),
        pytest.param(KeyboardInterrupt(), id="interrupt"),
        pytest.param(DatabaseUnavailable(retry_after=1.0), id="unavailable"),
        pytest.param(outlast.RequestBudgetExceeded(retry_after=1.0), id="budget"),
    ],
)
def test_an_end_that_says_nothing_about_the_database_frees_the_slot(error: BaseException) -> None:
    guard, _ = _half_open()
    with pytest.raises(type(error)), guard.admit(op="view"):
        raise error
    assert guard.breaker_state == "half_open"
    assert guard.admit(op="next").probe  # the very next caller probes


def test_no_verdict_frees_the_slot_without_closing() -> None:
    guard, _ = _half_open()
    guard.admit().release(verdict=False)  # e.g. the view built a 503 by itself
    assert guard.breaker_state == "half_open"
    assert guard.admit().probe


def test_release_is_idempotent() -> None:
    guard, _ = _half_open()
    probe = guard.admit()
    probe.release(err())
    assert guard.breaker_state == "open"
    probe.release()  # a second release (process_response after process_exception)
    assert guard.breaker_state == "open"


def test_after_release_the_context_no_longer_passes_checks() -> None:
    guard, _ = _half_open()
    probe = guard.admit()
    probe.release(verdict=False)
    holder = contextvars.Context().run(guard.admit)  # another request is now the probe
    try:
        with pytest.raises(DatabaseUnavailable):
            guard.check()
    finally:
        holder.release(verdict=False)


def test_a_copied_context_that_outlives_the_probe_stops_passing_checks() -> None:
    """A thread pool's copy of the request context, still running after the 503."""
    guard, _ = _half_open()
    probe = guard.admit()
    leftover = contextvars.copy_context()
    leftover.run(guard.check)  # inside the probe: passes
    probe.release(verdict=False)
    other = contextvars.Context().run(guard.admit)
    try:
        with pytest.raises(DatabaseUnavailable):
            leftover.run(guard.check)
    finally:
        other.release(verdict=False)


def test_release_from_another_context_still_frees_the_slot() -> None:
    guard, _ = _half_open()
    probe = guard.admit()
    contextvars.Context().run(probe.release)
    assert guard.breaker_state == "closed"


def test_a_probe_never_released_is_replaced_after_probe_timeout() -> None:
    guard, clock = _half_open(probe_timeout=10.0)
    stuck = guard.admit()
    assert _rejected(guard)
    clock.advance(10.0)
    fresh = contextvars.Context().run(guard.admit)
    assert fresh.probe
    stuck.release()  # late: the probe that took over decides
    assert guard.breaker_state == "half_open"
    fresh.release()
    assert guard.breaker_state == "closed"


def test_32_threads_at_once_get_exactly_one_probe() -> None:
    guard, _ = _half_open()
    barrier = threading.Barrier(32)
    admitted, rejected = [], []
    done = threading.Event()
    lock = threading.Lock()

    def request() -> None:
        barrier.wait()
        try:
            probe = guard.admit(op="view")
        except DatabaseUnavailable:
            with lock:
                rejected.append(1)
            return
        with lock:
            admitted.append(probe)
        done.wait(5.0)  # hold the slot until every other thread has been answered
        probe.release()

    threads = [threading.Thread(target=request) for _ in range(32)]
    for thread in threads:
        thread.start()
    while True:
        with lock:
            if len(admitted) + len(rejected) == 32:
                break
    done.set()
    for thread in threads:
        thread.join(5.0)
    assert (len(admitted), len(rejected)) == (1, 31)
    assert guard.breaker_state == "closed"


async def test_async_probe_is_exclusive_and_cancellation_frees_the_slot() -> None:
    guard, _ = _half_open()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def probe_request() -> str:
        async with guard.admit(op="view"):
            guard.check()
            inside.set()
            await release.wait()
        return "ok"

    async def other_request() -> str:
        try:
            async with guard.admit(op="view"):
                return "admitted"
        except DatabaseUnavailable:
            return "503"

    task = asyncio.create_task(probe_request())
    await inside.wait()
    others = await asyncio.gather(*(asyncio.create_task(other_request()) for _ in range(100)))
    assert others == ["503"] * 100
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.breaker_state == "half_open"
    assert await other_request() == "admitted"  # that one was the probe, and closed it
    assert guard.breaker_state == "closed"


async def test_async_probe_success_closes_and_sync_checks_in_a_worker_thread_pass() -> None:
    """FastAPI runs a sync endpoint in a thread with a copy of the request's context."""
    guard, _ = _half_open()
    async with guard.admit(op="view"):
        await asyncio.to_thread(guard.check)
        assert await asyncio.to_thread(guard.call, lambda: 1) == 1
    assert guard.breaker_state == "closed"
