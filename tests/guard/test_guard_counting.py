"""One rule for counting a fault once, and one classifier honoured end to end (pure logic).

A fault the Guard judged is marked where it was judged; whoever meets the same
exception later (re-raised, wrapped by SQLAlchemy, caught by a web handler, a
probe's release) does not count it again. A ``Guard(classifier=...)`` decides
for every layer: retries, the web mapping, connect retries.
"""

from __future__ import annotations

import pytest
from guard_kit import FakeDbError, Recorder, classify, err, fault

import outlast
from outlast import Breaker, FaultKind, Retry
from outlast._core.connections.connect_retry import next_delay
from outlast._core.web.mapping import map_exception, record_fault
from outlast.testing import ManualClock


def _guard(threshold: int = 2) -> tuple[outlast.Guard, Recorder]:
    events = Recorder()
    guard = outlast.Guard(
        "count",
        retry=Retry(attempts=1),
        breaker=Breaker(failure_threshold=threshold, min_calls=100),
        classifier=classify,
        clock=ManualClock(),
        listeners=[events],
    )
    return guard, events


class Wrapper(Exception):
    """SQLAlchemy's DBAPIError shape: the driver's error at ``.orig``."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__("wrapped")
        self.orig = orig


def _fail(exc: BaseException) -> None:
    raise exc


def test_an_error_counted_by_call_is_not_counted_again_when_reported() -> None:
    guard, events = _guard(threshold=2)
    error = err()
    with pytest.raises(outlast.DatabaseUnavailable) as info:
        guard.call(_fail, error)
    # A web handler, a pool hook and a loop all meet the same failure afterwards.
    guard.record_failure(error)
    guard.record_failure(info.value.__cause__ or error)
    guard.record_failure(Wrapper(error))
    record_fault(guard, error, "GET /x", None)
    assert guard.breaker_state == "closed"  # one failure of two
    assert guard.state.attempts == 1
    guard.record_failure(err())  # a new failure counts
    assert guard.breaker_state == "open"
    assert len(events.of(outlast.BreakerOpened)) == 1


def test_a_failure_reported_inside_call_is_not_counted_again_by_call() -> None:
    guard, _ = _guard(threshold=2)
    error = err()

    def hooked() -> None:
        guard.record_failure(error, op="pool")  # what a hardened pool's hook does
        raise error

    with pytest.raises(outlast.DatabaseUnavailable):
        guard.call(hooked)
    assert guard.state.attempts == 1 and guard.breaker_state == "closed"


def test_record_fault_passes_the_fault_it_has_and_counts_once() -> None:
    guard, _ = _guard(threshold=2)
    seen: list[BaseException] = []

    def counting_classifier(exc: BaseException) -> outlast.Fault | None:
        seen.append(exc)
        return classify(exc)

    guard = outlast.Guard(
        "once",
        retry=Retry(attempts=1),
        breaker=Breaker(failure_threshold=2, min_calls=100),
        classifier=counting_classifier,
        listeners=(),
    )
    error = err()
    mapped = map_exception(error, guard)
    assert mapped is not None and mapped.status == 503
    record_fault(guard, error, "GET /x", mapped.fault)
    record_fault(guard, error, "GET /x", mapped.fault)
    assert len(seen) == 1  # classified once, by map_exception, and passed along
    assert guard.state.attempts == 1


def test_a_custom_classifier_decides_the_web_answer() -> None:
    bug = FakeDbError(fault(FaultKind.PERMANENT, reason="undefined_table", phase="statement"))
    guard, _ = _guard()
    mapped = map_exception(bug, guard)
    assert mapped is not None and mapped.status == 500
    assert map_exception(bug) is None  # outlast.classify does not know FakeDbError


def test_a_custom_classifier_decides_connect_retries() -> None:
    neon = outlast.preset_for(None, "neon")

    class Refused(Exception):
        """Not a driver error: outlast.classify would not retry it."""

    refused = Refused("nothing listening")
    assert next_delay(neon, 0, 0.0, refused, 0.5) is None
    starting = fault(reason="starting_up")
    delay = next_delay(neon, 0, 0.0, refused, 0.5, classifier=lambda e: starting)
    assert delay is not None and 0 < delay <= 0.1
    permanent = fault(FaultKind.PERMANENT, reason="auth_failed")
    assert next_delay(neon, 0, 0.0, refused, 0.5, classifier=lambda e: permanent) is None


def test_the_request_budget_running_out_is_never_counted() -> None:
    for count_timeouts in (False, True):
        guard = outlast.Guard(
            "budget",
            breaker=Breaker(failure_threshold=1, count_timeouts=count_timeouts),
            listeners=(),
        )
        exc = RuntimeError("connection lost")
        from outlast._core.connections.statements import budget_ran_out

        budget_ran_out(exc)
        judged = guard.record_failure(exc)
        assert judged is not None and judged.reason == "request_budget_exceeded"
        assert guard.evidence(judged) is None
        assert guard.state.up and guard.breaker_state == "closed"
