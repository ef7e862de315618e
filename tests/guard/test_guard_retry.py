"""Retry rules of the Guard (pure logic: injected classifier, fake clock)."""

from __future__ import annotations

import asyncio

import pytest
from guard_kit import FakeDbError, Flaky, Recorder, err, make_guard

import outlast
from outlast import Backoff, Breaker, DatabaseUnavailable, FaultKind, Retry
from outlast.testing import ManualClock

NO_TRIP = Breaker(failure_threshold=1000, min_calls=1000)
EXACT = Backoff(initial=1.0, multiplier=2.0, cap=8.0, jitter=0.0)


def test_success_returns_the_result_and_passes_arguments() -> None:
    guard = make_guard()
    assert guard.call(lambda a, b=0: a + b, 2, b=3) == 5
    assert guard.state.up and guard.breaker_state == "closed"


def test_unavailable_before_the_statement_is_retried_until_it_succeeds() -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(clock, recorder=rec, retry=Retry(attempts=5, backoff=EXACT))
    fn = Flaky(err(), err(), result=42)
    assert guard.call(fn) == 42
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]  # exponential, jitter 0
    assert [e.attempt for e in rec.of(outlast.RetryScheduled)] == [1, 2]
    recovered = rec.of(outlast.DatabaseRecovered)
    assert len(recovered) == 1 and recovered[0].attempts == 3
    assert recovered[0].downtime == pytest.approx(3.0)
    assert guard.state.up and guard.state.outages == 1


def test_unavailable_after_the_statement_is_retried_only_when_idempotent() -> None:
    guard = make_guard(breaker=NO_TRIP)
    fn = Flaky(err(phase="statement", reason="connection_lost"))
    with pytest.raises(FakeDbError):  # may have run: the original error, no retry
        guard.call(fn)
    assert fn.calls == 1
    fn = Flaky(err(phase="statement", reason="connection_lost"))
    assert guard.call(fn, idempotent=True) == "ok"
    assert fn.calls == 2


def test_read_only_follows_the_unavailable_rule() -> None:
    guard = make_guard(breaker=NO_TRIP)
    with pytest.raises(FakeDbError):
        guard.call(Flaky(err(FaultKind.READ_ONLY, phase="statement")))
    assert guard.call(Flaky(err(FaultKind.READ_ONLY, phase="statement")), idempotent=True) == "ok"


def test_conflict_is_retried_and_reraised_unchanged_when_exhausted() -> None:
    guard = make_guard(retry=Retry(attempts=3), breaker=NO_TRIP)
    assert guard.call(Flaky(err(FaultKind.CONFLICT, phase="statement"))) == "ok"
    errors = [err(FaultKind.CONFLICT, phase="commit") for _ in range(3)]
    fn = Flaky(*errors)
    with pytest.raises(FakeDbError) as info:
        guard.call(fn)
    assert info.value is errors[-1] and fn.calls == 3
    assert guard.state.up  # the database answered: conflicts are not outages


@pytest.mark.parametrize("kind", [FaultKind.PERMANENT, FaultKind.TIMEOUT, FaultKind.COMMIT_UNKNOWN])
def test_faults_that_are_never_blind_retried(kind: FaultKind) -> None:
    guard = make_guard(breaker=NO_TRIP)
    error = err(kind, phase="commit")
    fn = Flaky(error)
    with pytest.raises(FakeDbError) as info:
        guard.call(fn, idempotent=True)
    assert info.value is error and fn.calls == 1
    # COMMIT_UNKNOWN means the database is unwell; the others do not.
    assert guard.state.up is (kind is not FaultKind.COMMIT_UNKNOWN)


def test_non_database_errors_pass_through_untouched() -> None:
    guard = make_guard()
    error = KeyError("app bug")
    fn = Flaky(error)
    with pytest.raises(KeyError) as info:
        guard.call(fn, idempotent=True)
    assert info.value is error and fn.calls == 1
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert guard.state.failures == 0


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
def test_interrupts_are_never_retried_nor_counted(error: BaseException) -> None:
    guard = make_guard()
    fn = Flaky(err(), error)
    with pytest.raises(type(error)):
        guard.call(fn, idempotent=True)
    assert fn.calls == 2
    assert guard.state.failures == 1  # only the database fault counted


async def test_cancellation_is_never_retried() -> None:
    guard = make_guard()
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await guard.acall(op, idempotent=True)
    assert calls == 1 and guard.state.failures == 0


def test_exhausted_unavailable_raises_database_unavailable_from_the_last_error() -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(
        clock, recorder=rec, retry=Retry(attempts=4, timeout=None, backoff=EXACT), breaker=NO_TRIP
    )
    errors = [err() for _ in range(4)]
    with pytest.raises(DatabaseUnavailable) as info:
        guard.call(Flaky(*errors), op="fetch_leads")
    assert info.value.__cause__ is errors[-1]
    assert info.value.fault is errors[-1].fault and info.value.guard == "test"
    assert info.value.retry_after > 0
    assert "hunter2" not in str(info.value)
    assert clock.sleeps == [1.0, 2.0, 4.0]
    (gave_up,) = rec.of(outlast.RetryGaveUp)
    assert (gave_up.attempts, gave_up.why, gave_up.op) == (4, "attempts", "fetch_leads")
    assert guard.state.down and guard.state.attempts == 4


def test_the_last_sleep_never_crosses_the_deadline() -> None:
    clock = ManualClock()
    retry = Retry(attempts=100, timeout=10.0, backoff=EXACT)
    guard = make_guard(clock, retry=retry, breaker=NO_TRIP)
    fn = Flaky(*[err() for _ in range(100)])
    with pytest.raises(DatabaseUnavailable):
        guard.call(fn)
    # 1 + 2 + 4 = 7; the next sleep (8) would end at 15 > 10: give up at once.
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert clock.monotonic() <= 10.0 and fn.calls == 4


def test_deadline_counts_the_time_the_attempts_take() -> None:
    clock = ManualClock()
    guard = make_guard(clock, retry=Retry(attempts=100, timeout=5.0, backoff=EXACT))

    def slow_failure() -> None:
        clock.advance(2.0)  # e.g. a connect timeout
        raise err()

    with pytest.raises(DatabaseUnavailable):
        guard.call(slow_failure)
    # First failure at 2; retries at 3 (fails at 5) and 7 (fails at 9); the next
    # sleep would start 7 s after the first failure: past the 5 s deadline.
    assert clock.sleeps == [1.0, 2.0]
    assert clock.monotonic() == 9.0


def test_per_call_timeout_replaces_the_policy_and_counts_from_the_call() -> None:
    clock = ManualClock()
    guard = make_guard(
        clock, retry=Retry(attempts=100, timeout=60.0, backoff=EXACT), breaker=NO_TRIP
    )
    start = clock.monotonic()

    def slow_failure() -> None:
        clock.advance(1.5)
        raise err()

    with pytest.raises(DatabaseUnavailable):
        guard.call(slow_failure, timeout=4.0)
    assert clock.monotonic() - start <= 4.0 + 1.5  # only the last attempt may run past it
    assert all(s <= 4.0 for s in clock.sleeps)


def test_attempts_one_disables_retries() -> None:
    guard = make_guard(retry=Retry(attempts=1), breaker=NO_TRIP)
    fn = Flaky(err())
    with pytest.raises(DatabaseUnavailable):
        guard.call(fn)
    assert fn.calls == 1


def test_retries_stop_when_the_breaker_opens_meanwhile() -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(
        clock, recorder=rec, retry=Retry(attempts=10), breaker=Breaker(failure_threshold=3)
    )
    fn = Flaky(*[err() for _ in range(10)])
    with pytest.raises(DatabaseUnavailable) as info:
        guard.call(fn)
    assert fn.calls == 3 and guard.breaker_state == "open"
    assert info.value.retry_after == pytest.approx(1.0)
    assert rec.of(outlast.RetryGaveUp)[0].why == "breaker_open"


def test_a_failing_classifier_is_treated_as_not_a_database_error() -> None:
    def broken(exc: BaseException) -> None:
        raise RuntimeError("classifier bug")

    guard = outlast.Guard("g", classifier=broken, clock=ManualClock())
    with pytest.raises(ValueError):
        guard.call(Flaky(ValueError("x")))


def test_retrying_decorator_bare_and_with_options_sync() -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(clock, recorder=rec, breaker=NO_TRIP)
    errors = [err(phase="statement"), err(phase="statement")]

    @guard.retrying
    def bare(x: int) -> int:
        if errors:
            raise errors.pop()
        return x * 2

    @guard.retrying(idempotent=True, op="named")
    def with_options(x: int) -> int:
        if errors:
            raise errors.pop()
        return x * 3

    assert bare.__name__ == "bare"
    with pytest.raises(FakeDbError):  # statement phase, not idempotent
        bare(1)
    assert with_options(2) == 6
    assert bare(4) == 8
    assert [e.op for e in rec.of(outlast.RetryScheduled)] == ["named"]
    assert rec.of(outlast.DatabaseDown)[0].op.endswith("bare")  # __qualname__ by default


async def test_retrying_decorator_and_acall_async() -> None:
    clock = ManualClock()
    guard = make_guard(clock, retry=Retry(attempts=3, backoff=EXACT), breaker=NO_TRIP)
    fn = Flaky(err(), err())

    @guard.retrying
    async def fetch(x: int) -> tuple[int, object]:
        await asyncio.sleep(0)
        return x, fn()

    assert await fetch(7) == (7, "ok")
    assert fn.calls == 3 and clock.sleeps == [1.0, 2.0]

    async def never() -> None:
        raise err()

    with pytest.raises(DatabaseUnavailable):
        await guard.acall(never)


def test_safe_returns_the_default_but_lets_permanent_faults_and_bugs_through() -> None:
    guard = make_guard(retry=Retry(attempts=2), breaker=NO_TRIP)
    assert guard.safe(Flaky(err(), err()), default=0) == 0
    assert guard.safe(Flaky(err(FaultKind.TIMEOUT)), default=[]) == []
    assert guard.safe(Flaky(result=5), default=0) == 5
    with pytest.raises(FakeDbError):
        guard.safe(Flaky(err(FaultKind.PERMANENT, phase="statement")), default=0)
    with pytest.raises(FakeDbError):
        guard.safe(Flaky(err(FaultKind.COMMIT_UNKNOWN, phase="commit")), default=0)
    with pytest.raises(ZeroDivisionError):
        guard.safe(lambda: 1 / 0, default=0)


async def test_asafe_returns_the_default_when_the_breaker_is_open() -> None:
    guard = make_guard(breaker=Breaker(failure_threshold=1))
    calls = 0

    async def down() -> int:
        nonlocal calls
        calls += 1
        raise err()

    assert await guard.asafe(down, default=-1) == -1
    assert guard.breaker_state == "open"
    assert await guard.asafe(down, default=-2) == -2
    assert calls == 1

    async def bug() -> int:
        raise err(FaultKind.PERMANENT, phase="statement")

    with pytest.raises(FakeDbError):
        await make_guard().asafe(bug, default=0)
