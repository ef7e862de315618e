"""Hooks inside a guarded call (a pool's checkout, its error events) cooperate with the Guard.

A hardened engine calls ``guard.check()`` at checkout and ``guard.record_failure``
from its error hook. Inside ``guard.call`` that must neither turn away the
Guard's own half-open probe nor count one fault twice.
"""

from __future__ import annotations

from typing import Any

import pytest
from guard_kit import err, make_guard

import outlast
from outlast import Breaker, FaultKind, Retry
from outlast.testing import ManualClock


def _hooked(guard: outlast.Guard, flaky: list[BaseException]) -> Any:
    """An operation that behaves like a query through a guard-aware pool."""

    def query() -> str:
        guard.check()  # the pool's checkout hook
        if flaky:
            exc = flaky.pop(0)
            guard.record_failure(exc, op="pool")  # the pool's error hook
            raise exc
        return "row"

    return query


def test_probe_through_a_pool_hook_closes_the_breaker() -> None:
    clock = ManualClock()
    guard = make_guard(
        clock,
        retry=Retry(attempts=1, timeout=5),
        breaker=Breaker(failure_threshold=2, open_for=1, max_open_for=1),
    )
    failures: list[BaseException] = [err(), err()]
    query = _hooked(guard, failures)
    for _ in range(2):
        with pytest.raises(outlast.DatabaseUnavailable):
            guard.call(query)
    assert guard.breaker_state == "open"
    clock.advance(1.5)
    assert guard.call(query) == "row"  # the half-open probe is not refused by check()
    assert guard.breaker_state == "closed"
    assert guard.state.up


def test_a_fault_reported_by_a_hook_is_counted_once() -> None:
    guard = make_guard(
        ManualClock(),
        retry=Retry(attempts=1, timeout=5),
        breaker=Breaker(failure_threshold=4, open_for=1),
    )
    failures: list[BaseException] = [err() for _ in range(3)]
    query = _hooked(guard, failures)
    for _ in range(3):
        with pytest.raises(outlast.DatabaseUnavailable):
            guard.call(query)
    # Three faults, each seen by the hook and by the Guard: still three, below 4.
    assert guard.state.failures == 3
    assert guard.breaker_state == "closed"


def test_check_outside_a_call_still_fails_fast_when_open() -> None:
    clock = ManualClock()
    guard = make_guard(clock, breaker=Breaker(failure_threshold=1, open_for=10, max_open_for=10))
    guard.record_failure(err(FaultKind.UNAVAILABLE))
    with pytest.raises(outlast.DatabaseUnavailable):
        guard.check()
