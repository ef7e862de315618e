"""One vocabulary for time: a timeout is a duration, a deadline is an instant.

`Guard.call(timeout=)`, `Guard.transaction(timeout=)` and `Retry(timeout=)` are
the names now; their old names (``deadline=``) keep working with a
DeprecationWarning, and every duration accepts a `timedelta`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

import outlast
from outlast import Backoff, Retry
from outlast.testing import ManualClock

EXACT = Backoff(initial=1.0, multiplier=2.0, cap=100.0, jitter=0.0)


class Down(Exception):
    sqlstate = "57P03"  # "the database system is starting up": UNAVAILABLE, before the statement


def _guard(clock: ManualClock, retry: Retry) -> outlast.Guard:
    return outlast.Guard(
        "vocab",
        retry=retry,
        breaker=outlast.Breaker(enabled=False),
        clock=clock,
        listeners=(),
    )


def _fail() -> None:
    raise Down("starting up")


@pytest.mark.parametrize("timeout", [3.5, timedelta(seconds=3.5)])
def test_a_per_call_timeout_bounds_the_retries(timeout: float | timedelta) -> None:
    clock = ManualClock()
    guard = _guard(clock, Retry(attempts=100, timeout=60.0, backoff=EXACT))
    with pytest.raises(outlast.DatabaseUnavailable):
        guard.call(_fail, timeout=timeout)
    # Sleeps of 1 s and 2 s fit in 3.5 s; the next (4 s) would end past the deadline.
    assert clock.monotonic() == pytest.approx(3.0)


def test_the_old_deadline_keyword_still_works_and_says_it_is_deprecated() -> None:
    clock = ManualClock()
    guard = _guard(clock, Retry(attempts=100, timeout=60.0, backoff=EXACT))
    with (
        pytest.warns(DeprecationWarning, match="timeout="),
        pytest.raises(outlast.DatabaseUnavailable),
    ):
        guard.call(_fail, deadline=3.5)
    assert clock.monotonic() == pytest.approx(3.0)
    with pytest.raises(outlast.ConfigurationError, match="timeout= only"):
        guard.call(_fail, timeout=1.0, deadline=1.0)


def test_retry_takes_timeout_and_keeps_deadline_as_a_deprecated_alias() -> None:
    assert Retry(timeout=timedelta(seconds=2)).timeout == 2.0
    assert Retry().timeout == 5.0
    assert Retry(timeout=None).timeout is None
    with pytest.warns(DeprecationWarning):
        old = Retry(deadline=4)
    assert old.timeout == 4.0 and old.deadline == 4.0 and old == Retry(timeout=4.0)
    with pytest.raises(outlast.ConfigurationError):
        Retry(timeout=1.0, deadline=2.0)


def test_a_bad_per_call_timeout_is_a_configuration_error() -> None:
    guard = _guard(ManualClock(), Retry())
    for bad in (-1.0, float("nan"), "3", True):
        with pytest.raises(outlast.ConfigurationError, match="timeout"):
            guard.call(lambda: 1, timeout=bad)  # type: ignore[arg-type]


def test_hardening_names_its_client_side_statement_timeout() -> None:
    preset = outlast.Hardening(statement_timeout=timedelta(seconds=3), deadline_grace=1.5)
    assert preset.client_statement_timeout == 4.5
    with pytest.warns(DeprecationWarning):
        assert preset.statement_deadline == 4.5
