"""A listener that raises a BaseException never leaves the breaker half-updated.

A listener is synchronous: what it raises is its own failure, logged and
skipped -- also a ``CancelledError`` or ``GeneratorExit`` it let escape.
``KeyboardInterrupt`` and ``SystemExit`` go through to the caller, but only
after the Guard's bookkeeping is complete: a half-open probe whose
``BreakerHalfOpen`` listener was interrupted gives its slot back at once, so
the next caller probes instead of being turned away for ``probe_timeout``
while ``Retry-After`` says the breaker is about to admit one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from guard_kit import Flaky, Recorder, classify, err, make_guard

import outlast
from outlast import Breaker, DatabaseUnavailable, Retry
from outlast.testing import ManualClock

OPEN_FOR = 0.04  # the breaker's Retry-After when the slot leaked
PROBE_TIMEOUT = 30.0


class Interrupting:
    """A listener that raises `exc` on events of type `on` (once, or always)."""

    def __init__(self, on: type, exc: Callable[[], BaseException], *, once: bool = True) -> None:
        self.on = on
        self.exc = exc
        self.once = once
        self.raised = 0

    def __call__(self, event: outlast.Event) -> None:
        if isinstance(event, self.on) and not (self.once and self.raised):
            self.raised += 1
            raise self.exc()


def _half_open(*listeners: Callable[[outlast.Event], object]) -> tuple[outlast.Guard, ManualClock]:
    clock = ManualClock()
    guard = make_guard(
        clock,
        retry=Retry(attempts=1),
        breaker=Breaker(
            failure_threshold=1, open_for=OPEN_FOR, max_open_for=1.0, probe_timeout=PROBE_TIMEOUT
        ),
    )
    for listener in listeners:
        guard.add_listener(listener)
    guard.record_failure(err())
    clock.advance(OPEN_FOR)
    assert guard.breaker_state == "half_open"
    return guard, clock


def _sync_call(guard: outlast.Guard, work: Callable[[], object]) -> object:
    return guard.call(work)


def _async_call(guard: outlast.Guard, work: Callable[[], object]) -> object:
    async def awork() -> object:
        return work()

    return asyncio.run(guard.acall(awork))


def _decorated(guard: outlast.Guard, work: Callable[[], object]) -> object:
    return guard.retrying(work)()


def _admitted(guard: outlast.Guard, work: Callable[[], object]) -> object:
    with guard.admit(op="view"):
        return work()


ENTRY_POINTS = [_sync_call, _async_call, _decorated, _admitted]
EXITS = [KeyboardInterrupt, lambda: SystemExit(3)]


@pytest.mark.parametrize("enter", ENTRY_POINTS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("exc", EXITS, ids=["KeyboardInterrupt", "SystemExit"])
def test_an_interrupted_half_open_listener_gives_the_probe_slot_back(
    enter: Callable[[outlast.Guard, Callable[[], object]], object],
    exc: Callable[[], BaseException],
) -> None:
    interrupting = Interrupting(outlast.BreakerHalfOpen, exc)
    guard, _ = _half_open(interrupting)
    ran: list[str] = []
    with pytest.raises(type(exc())):
        enter(guard, lambda: ran.append("work"))
    assert ran == []  # the work never started
    # The slot is free again: Retry-After says 0 and the next caller is the probe
    # (before the fix it was rejected for the whole probe_timeout, Retry-After 0.04 s).
    assert guard.retry_after == 0.0
    assert enter(guard, lambda: "rows") == "rows"
    assert guard.breaker_state == "closed" and guard.state.up


def test_retry_after_is_honest_after_the_interrupt() -> None:
    """The symptom users saw: rejections for 30 s while Retry-After said 0.04 s."""
    guard, clock = _half_open(Interrupting(outlast.BreakerHalfOpen, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        guard.call(lambda: None)
    ran = 0
    for _ in range(5):
        clock.advance(guard.retry_after)  # come back exactly when told to
        work = Flaky(err())  # each probe fails: the breaker opens again, for longer
        with pytest.raises(DatabaseUnavailable):
            guard.call(work)
        ran += work.calls
    assert ran == 5  # every caller that waited Retry-After became the probe


@pytest.mark.parametrize(
    "event", [outlast.BreakerOpened, outlast.DatabaseDown, outlast.RetryGaveUp]
)
def test_an_interrupt_while_an_outage_is_reported_keeps_the_breaker_state(event: type) -> None:
    rec = Recorder()
    clock = ManualClock()
    guard = outlast.Guard(
        "test",
        classifier=classify,
        clock=clock,
        listeners=[Interrupting(event, KeyboardInterrupt), outlast.log_event, rec],
        retry=Retry(attempts=1),
        breaker=Breaker(failure_threshold=1, open_for=1.0, probe_timeout=PROBE_TIMEOUT),
    )
    with pytest.raises(KeyboardInterrupt):
        guard.call(Flaky(err()))
    # Bookkeeping done, and the listeners after the interrupted one got every event.
    assert guard.breaker_state == "open" and not guard.state.up
    assert {"DatabaseDown", "BreakerOpened", "RetryGaveUp"} <= set(rec.names())
    clock.advance(1.0)
    assert guard.call(lambda: "rows") == "rows"
    assert guard.breaker_state == "closed"


def test_an_interrupt_when_the_probe_succeeds_still_closes_the_breaker() -> None:
    guard, _ = _half_open(Interrupting(outlast.BreakerClosed, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        guard.call(lambda: "rows")
    assert guard.breaker_state == "closed" and guard.state.up
    assert guard.call(lambda: "rows") == "rows"


class Custom(BaseException):
    pass


@pytest.mark.parametrize(
    "exc", [asyncio.CancelledError, GeneratorExit, Custom], ids=lambda c: c.__name__
)
def test_other_base_exceptions_are_the_listener_s_failure(
    exc: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="outlast")
    rec = Recorder()
    guard, _ = _half_open(Interrupting(outlast.BreakerHalfOpen, exc, once=False), rec)
    assert guard.call(lambda: "rows") == "rows"  # the call is not broken by it
    assert guard.breaker_state == "closed"
    assert "BreakerClosed" in rec.names()  # later listeners and events still delivered
    assert any("[LISTENER_ERROR]" in r.getMessage() for r in caplog.records)


async def test_an_async_probe_interrupted_by_its_listener_frees_the_slot() -> None:
    guard, _ = _half_open(Interrupting(outlast.BreakerHalfOpen, KeyboardInterrupt))

    async def work() -> str:
        return "rows"

    with pytest.raises(KeyboardInterrupt):
        await guard.acall(work)
    results: list[Any] = await asyncio.gather(guard.acall(work), return_exceptions=True)
    assert results == ["rows"]
