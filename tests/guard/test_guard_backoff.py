"""Backoff and policy values: validation, and properties checked with Hypothesis."""

from __future__ import annotations

import dataclasses
import random
import threading
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import outlast
from outlast import Backoff, Breaker, Retry

backoffs = st.builds(
    lambda initial, factor, multiplier, jitter: Backoff(
        initial=initial, cap=initial * factor, multiplier=multiplier, jitter=jitter
    ),
    initial=st.floats(0.001, 10.0),
    factor=st.floats(1.0, 1000.0),
    multiplier=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
)
unit = st.floats(0.0, 1.0, exclude_max=True)


@given(backoffs, st.integers(1, 10_000), unit)
def test_every_delay_is_within_its_bounds(backoff: Backoff, retry: int, rand: float) -> None:
    delay = backoff.delay(retry, rand)
    base = backoff.base(retry)
    assert base <= backoff.cap
    assert base * (1 - backoff.jitter) - 1e-9 <= delay <= base + 1e-9
    assert 0 <= delay <= backoff.cap


@given(backoffs, st.integers(1, 50))
def test_the_base_never_shrinks_from_one_retry_to_the_next(backoff: Backoff, retry: int) -> None:
    assert backoff.base(retry) <= backoff.base(retry + 1) + 1e-12


@settings(max_examples=200)
@given(
    backoff=backoffs,
    attempts=st.integers(1, 200),
    deadline=st.floats(0.0, 100.0),
    durations=st.lists(st.floats(0.0, 5.0), min_size=200, max_size=200),
    seed=st.integers(0, 2**32),
)
def test_total_sleep_never_goes_past_the_deadline(
    backoff: Backoff, attempts: int, deadline: float, durations: list[float], seed: int
) -> None:
    retry = Retry(attempts=attempts, timeout=deadline, backoff=backoff)
    rng = random.Random(seed)
    elapsed = slept = 0.0
    failed = 0
    while True:
        elapsed += durations[failed]  # the attempt itself takes time
        failed += 1
        sleep = retry.next_sleep(failed, elapsed, retry.timeout, rng.random())
        if sleep is None:
            break
        assert elapsed + sleep <= deadline  # a sleep never ends past the deadline
        elapsed += sleep
        slept += sleep
    assert failed <= attempts
    assert slept <= deadline


@given(st.floats(0.01, 5.0), st.floats(0.1, 1.0), st.integers(0, 2**32))
def test_delays_at_the_cap_still_spread_out(cap: float, jitter: float, seed: int) -> None:
    backoff = Backoff(initial=cap / 8, cap=cap, multiplier=2.0, jitter=jitter)
    rng = random.Random(seed)
    delays = [backoff.delay(50, rng.random()) for _ in range(20)]
    assert len({round(d, 9) for d in delays}) >= 5  # not one constant
    assert min(delays) >= cap * (1 - jitter) - 1e-9 and max(delays) <= cap


def test_huge_retry_numbers_do_not_overflow() -> None:
    backoff = Backoff(initial=0.1, multiplier=10.0, cap=3.0, jitter=0.0)
    assert backoff.delay(10**9, 0.5) == 3.0


def test_policies_accept_timedelta_and_are_immutable_and_shareable() -> None:
    retry = Retry(
        timeout=timedelta(seconds=3),
        backoff=Backoff(initial=timedelta(milliseconds=50), cap=timedelta(seconds=1)),
    )
    assert retry.timeout == 3.0 and retry.backoff.initial == 0.05 and retry.backoff.cap == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        retry.attempts = 9  # type: ignore[misc]
    assert Breaker(open_for=timedelta(seconds=2), max_open_for=timedelta(seconds=4)).open_for == 2.0
    assert dataclasses.replace(retry, attempts=2).attempts == 2
    assert hash(retry) == hash(dataclasses.replace(retry))
    # Shared by two guards in two threads: the value never changes.
    guards = [outlast.Guard(f"g{i}", retry=retry, classifier=lambda e: None) for i in range(2)]
    threads = [threading.Thread(target=g.call, args=(lambda: None,)) for g in guards]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert retry == Retry(timeout=3.0, backoff=Backoff(initial=0.05, cap=1.0))


@pytest.mark.parametrize(
    ("factory", "option"),
    [
        (lambda: Backoff(initial=0), "initial"),
        (lambda: Backoff(initial=-1), "initial"),
        (lambda: Backoff(cap=float("inf")), "cap"),
        (lambda: Backoff(initial=5, cap=1), "cap"),
        (lambda: Backoff(multiplier=0.5), "multiplier"),
        (lambda: Backoff(jitter=1.5), "jitter"),
        (lambda: Retry(attempts=0), "attempts"),
        (lambda: Retry(attempts=True), "attempts"),
        (lambda: Retry(timeout=-1), "timeout"),
        (lambda: Retry(timeout="10"), "timeout"),
        (lambda: Retry(backoff=3), "backoff"),
        (lambda: Breaker(failure_threshold=0), "failure_threshold"),
        (lambda: Breaker(min_calls=0), "min_calls"),
        (lambda: Breaker(failure_rate=0), "failure_rate"),
        (lambda: Breaker(failure_rate=1.5), "failure_rate"),
        (lambda: Breaker(window=0), "window"),
        (lambda: Breaker(open_for=10, max_open_for=5), "max_open_for"),
        (lambda: Breaker(open_multiplier=0.9), "open_multiplier"),
        (lambda: Breaker(probe_timeout=0), "probe_timeout"),
        (lambda: outlast.Guard(""), "name"),
        (lambda: outlast.Guard("x", retry=3), "retry"),  # type: ignore[arg-type]
        (lambda: outlast.Guard("x", classifier=3), "classifier"),  # type: ignore[arg-type]
    ],
)
def test_bad_options_raise_value_error_naming_the_option(factory, option: str) -> None:
    with pytest.raises(outlast.ConfigurationError, match=option):
        factory()
