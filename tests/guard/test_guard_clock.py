"""The no-wait switch and the fake clock remove every wait, sync and async."""

from __future__ import annotations

import time

import pytest
from guard_kit import Flaky, classify, err

import outlast
from outlast import Backoff, Breaker, DatabaseUnavailable, Retry
from outlast.testing import ManualClock, no_waits, waits_disabled

SLOW = Retry(attempts=4, timeout=600, backoff=Backoff(initial=100, cap=100, jitter=0))


def _guard() -> outlast.Guard:  # the real system clock
    return outlast.Guard(
        "clock", retry=SLOW, breaker=Breaker(failure_threshold=100), classifier=classify
    )


def test_no_waits_as_a_context_manager_removes_real_sleeps_and_restores() -> None:
    assert not waits_disabled()
    start = time.monotonic()
    with no_waits():
        assert waits_disabled()
        assert _guard().call(Flaky(err(), err(), err())) == "ok"
    assert not waits_disabled()
    assert time.monotonic() - start < 30  # without the switch: 300 s


async def test_no_waits_as_a_call_applies_to_async_sleeps() -> None:
    no_waits()
    try:
        start = time.monotonic()

        async def op() -> None:
            raise err()

        with pytest.raises(DatabaseUnavailable):
            await _guard().acall(op)
        assert time.monotonic() - start < 30
    finally:
        no_waits(False)
    assert not waits_disabled()


def test_nested_switches_restore_the_outer_setting() -> None:
    with no_waits():
        with no_waits(False):
            assert not waits_disabled()
        assert waits_disabled()
    assert not waits_disabled()


async def test_manual_clock_advances_on_sleep_and_records_it() -> None:
    clock = ManualClock(10.0, wall=1000.0)
    assert isinstance(clock, outlast.Clock)
    clock.sleep(1.5)
    await clock.asleep(2.0)
    clock.advance(0.5)
    assert clock.monotonic() == 14.0 and clock.time() == 1004.0
    assert clock.sleeps == [1.5, 2.0]
    with pytest.raises(ValueError):
        clock.advance(-1)
