"""Events, listeners, the default log lines and the state snapshot."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from guard_kit import FakeDbError, Flaky, Recorder, err, make_guard

import outlast
from outlast import Backoff, Breaker, DatabaseUnavailable, Retry
from outlast.testing import ManualClock

EXACT = Backoff(initial=0.5, multiplier=2.0, cap=4.0, jitter=0.0)


def _outage(caplog: pytest.LogCaptureFixture) -> tuple[ManualClock, outlast.Guard, Recorder]:
    caplog.set_level(logging.DEBUG, logger="outlast")
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(
        clock,
        recorder=rec,
        retry=Retry(attempts=3, timeout=None, backoff=EXACT),
        breaker=Breaker(failure_threshold=3, open_for=2.0, max_open_for=8.0),
    )
    with pytest.raises(DatabaseUnavailable):
        guard.call(Flaky(err(), err(), err()), op="fetch_leads")
    clock.advance(2.0)
    assert guard.call(lambda: "rows", op="fetch_leads") == "rows"
    return clock, guard, rec


def test_an_outage_emits_events_in_order_with_their_fields(caplog) -> None:
    clock, guard, rec = _outage(caplog)
    assert rec.names() == [
        "DatabaseDown",
        "RetryScheduled",
        "RetryScheduled",
        "BreakerOpened",
        "RetryGaveUp",
        "BreakerHalfOpen",
        "BreakerClosed",
        "DatabaseRecovered",
    ]
    down = rec.of(outlast.DatabaseDown)[0]
    assert (down.guard, down.op, down.fault.reason) == ("test", "fetch_leads", "connection_refused")
    assert [(e.attempt, e.attempts, e.sleep) for e in rec.of(outlast.RetryScheduled)] == [
        (1, 3, 0.5),
        (2, 3, 1.0),
    ]
    (recovered,) = rec.of(outlast.DatabaseRecovered)
    assert recovered.downtime == pytest.approx(3.5) and recovered.attempts == 4
    assert recovered.down_since == pytest.approx(clock.time() - 3.5)
    for event in rec.events:
        assert dataclasses.is_dataclass(event)
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.guard = "x"  # type: ignore[misc]


def test_the_default_listener_logs_the_seed_tags(caplog) -> None:
    _outage(caplog)
    lines = [r.getMessage() for r in caplog.records]
    assert "[DB_DOWN] op=fetch_leads try=1/3 sleep=0.5s reason=connection_refused" in lines
    assert "[DB_DOWN] op=fetch_leads try=2/3 sleep=1s reason=connection_refused" in lines
    assert "[BREAKER_OPEN] guard=test for=2s reason=connection_refused trips=1" in lines
    assert "[BREAKER_CLOSED] guard=test after=2s" in lines
    assert "[DB_RECOVERED] op=fetch_leads after 4 attempts downtime=3.5s" in lines
    levels = {r.getMessage().split("]")[0] + "]": r.levelno for r in caplog.records}
    assert levels["[DB_DOWN]"] == logging.WARNING
    assert levels["[DB_RECOVERED]"] == logging.INFO
    assert levels["[BREAKER_OPEN]"] == logging.WARNING
    assert all(r.name == "outlast" for r in caplog.records)


def test_log_records_carry_structured_fields_and_no_secret(caplog) -> None:
    _outage(caplog)
    retry = next(r for r in caplog.records if r.getMessage().startswith("[DB_DOWN]"))
    assert retry.outlast_event == "retry_scheduled"  # type: ignore[attr-defined]
    assert retry.guard == "test" and retry.op == "fetch_leads"  # type: ignore[attr-defined]
    assert retry.reason == "connection_refused" and retry.attempt == 1  # type: ignore[attr-defined]
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert "hunter2" not in text and "postgresql://" not in text
        assert record.exc_info is None


def test_a_failing_listener_is_logged_and_never_breaks_the_call(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="outlast")
    rec = Recorder()

    def broken(event: outlast.Event) -> None:
        raise RuntimeError("listener bug")

    guard = make_guard(recorder=rec, retry=Retry(attempts=2))
    guard.add_listener(broken)
    assert guard.call(Flaky(err())) == "ok"
    assert rec.names() == ["DatabaseDown", "RetryScheduled", "DatabaseRecovered"]
    assert sum("[LISTENER_ERROR]" in r.getMessage() for r in caplog.records) == 3
    guard.remove_listener(broken)
    guard.remove_listener(rec)
    guard.call(Flaky(err()))
    assert len(rec.events) == 3
    with pytest.raises(ValueError):
        guard.remove_listener(rec)


def test_state_snapshot_through_an_outage(caplog) -> None:
    clock, rec = ManualClock(), Recorder()
    guard = make_guard(clock, recorder=rec, retry=Retry(attempts=1), breaker=Breaker(enabled=False))
    assert guard.state == outlast.DatabaseState(
        up=True,
        down_since=None,
        last_fault=None,
        outages=0,
        downtime=0.0,
        attempts=0,
        failures=0,
        recovered_at=None,
        breaker="closed",
    )
    for _ in range(2):
        with pytest.raises(DatabaseUnavailable):
            guard.call(Flaky(err()))
        clock.advance(5.0)
        state = guard.state
        assert state.down and state.down_since is not None
        assert state.last_fault is not None and state.downtime > 0
    assert state.failures == 2 and state.attempts == 2 and state.outages == 1
    assert state.downtime == pytest.approx(10.0)
    guard.call(lambda: None)
    assert guard.state.up and guard.state.recovered_at == clock.time()
    clock.advance(100.0)
    assert guard.state.downtime == pytest.approx(10.0)  # stops growing once up
    with pytest.raises(FakeDbError):  # statement phase, not idempotent: no retry
        guard.call(Flaky(err(phase="statement")))
    assert guard.state.outages == 2


def test_guard_exposes_its_name_and_policies() -> None:
    retry, breaker = Retry(attempts=2), Breaker(failure_threshold=9)
    guard = outlast.Guard("main", retry=retry, breaker=breaker, classifier=lambda e: None)
    assert (guard.name, guard.retry, guard.breaker) == ("main", retry, breaker)
    assert guard.retry_after == 0.0 and guard.breaker_state == "closed"
    assert "main" in repr(guard)
    guard.check()
