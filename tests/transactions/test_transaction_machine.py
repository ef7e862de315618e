"""The transaction state machine against a scripted fake driver (pure logic).

Every test runs through both shells (sync `run_transaction` and async
`arun_transaction`) so the twins cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tx_fakes import AsyncFakeAdapter, Bug, Conflict, FakeAdapter, Lost, make_guard

import outlast
from outlast._core.guard.base import counted_by
from outlast._core.transactions.adapters import StatusReply
from outlast._core.transactions.machine import arun_transaction, run_transaction

COMMITTED = StatusReply("committed", "boot-1")
ABORTED = StatusReply("aborted", "boot-1")
RUNNING = StatusReply("in progress", "boot-1")


def _run_both(
    make: Callable[[], tuple[FakeAdapter, outlast.Guard, Any]],
) -> list[tuple[FakeAdapter, Any, list[int]]]:
    """Run the same script through the sync and the async shell."""
    import asyncio

    results = []
    for mode in ("sync", "async"):
        adapter, guard, _ = make()
        runs: list[int] = []

        def work(conn: object, value: int, runs: list[int] = runs) -> int:
            runs.append(value)
            return value * 2

        async def awork(conn: object, value: int) -> int:
            return work(conn, value)

        try:
            if mode == "sync":
                outcome: Any = run_transaction(guard, adapter, work, 21)
            else:
                outcome = asyncio.run(arun_transaction(guard, AsyncFakeAdapter(adapter), awork, 21))
        except Exception as exc:
            outcome = exc
        results.append((adapter, outcome, runs))
    return results


def test_commit_lost_then_committed_returns_without_rerunning() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        return FakeAdapter([("commit", Lost("gone"))], [COMMITTED]), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert outcome == 42
        assert runs == [21]  # fn ran once: no re-run after a resolved COMMIT
        assert adapter.calls["commit"] == 1  # COMMIT is never sent twice
        assert adapter.calls["status"] == 1
        assert adapter.closed == [True]  # the broken connection was discarded


def test_commit_lost_then_aborted_reruns_the_whole_function() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        return FakeAdapter([("commit", Lost("gone")), None], [ABORTED]), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert outcome == 42
        assert runs == [21, 21]
        assert adapter.calls["commit"] == 2
        assert adapter.closed == [True, False]


def test_in_progress_is_asked_again_until_it_settles() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        statuses = [RUNNING, Lost("still down"), RUNNING, COMMITTED]
        return FakeAdapter([("commit", Lost("gone"))], statuses), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert outcome == 42
        assert runs == [21]
        assert adapter.calls["status"] == 4


def test_unreachable_until_the_deadline_raises_commit_outcome_unknown() -> None:
    clocks = []

    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard(attempts=3, timeout=5.0)
        clocks.append(clock)
        return FakeAdapter([("commit", Lost("gone"))], [Lost("down")] * 100), guard, clock

    for (adapter, outcome, runs), clock in zip(_run_both(make), clocks, strict=True):
        assert isinstance(outcome, outlast.CommitOutcomeUnknown)
        assert outcome.xid == "731"
        assert "731" in str(outcome)
        assert isinstance(outcome.__cause__, Lost)
        assert runs == [21]  # never re-run while the outcome is unknown
        assert adapter.calls["commit"] == 1
        # The deadline bounds the resolution, not the attempt count, and no
        # sleep ends past it.
        assert adapter.calls["status"] > 3
        assert clock.monotonic() <= 5.0


def test_breaker_refusing_the_status_question_still_means_unknown() -> None:
    """An open breaker says nothing about the COMMIT: never DatabaseUnavailable."""

    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard(attempts=3, timeout=2.0)
        refused = [outlast.DatabaseUnavailable("breaker open", retry_after=1.0)] * 100
        return FakeAdapter([("commit", Lost("gone"))], refused), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert isinstance(outcome, outlast.CommitOutcomeUnknown), outcome
        assert "circuit breaker open" in str(outcome)
        assert runs == [21] and adapter.calls["commit"] == 1
        assert adapter.calls["status"] > 1  # it kept asking until the deadline

    def make_then_ok() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard(attempts=3, timeout=2.0)
        statuses = [outlast.DatabaseUnavailable("breaker open", retry_after=0.1), COMMITTED]
        return FakeAdapter([("commit", Lost("gone"))], statuses), guard, clock

    for adapter, outcome, runs in _run_both(make_then_ok):
        assert outcome == 42 and runs == [21] and adapter.calls["status"] == 2


def test_forgotten_xid_raises_commit_outcome_unknown_at_once() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        return FakeAdapter([("commit", Lost("gone"))], [StatusReply(None, "boot-1")]), guard, clock

    for adapter, outcome, _ in _run_both(make):
        assert isinstance(outcome, outlast.CommitOutcomeUnknown)
        assert adapter.calls["status"] == 1


def test_committed_after_a_server_restart_is_not_trusted() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        reply = StatusReply("committed", "boot-2")
        return FakeAdapter([("commit", Lost("gone"))], [reply]), guard, clock

    for _, outcome, runs in _run_both(make):
        assert isinstance(outcome, outlast.CommitOutcomeUnknown)
        assert "restarted" in str(outcome)
        assert runs == [21]


def test_unassigned_xid_after_a_restart_means_aborted() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        reply = StatusReply("unassigned", "boot-2")
        return FakeAdapter([("commit", Lost("gone")), None], [reply]), guard, clock

    for _, outcome, runs in _run_both(make):
        assert outcome == 42
        assert runs == [21, 21]


def test_lost_commit_of_a_transaction_that_wrote_nothing_returns_its_result() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        return FakeAdapter([("commit", Lost("gone"))], [], xid=None), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert outcome == 42
        assert runs == [21]
        assert adapter.calls["status"] == 0


def test_conflict_before_commit_reruns_the_whole_function() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        plan = [("work", Conflict("40001")), ("work", Conflict("40001")), None]
        return FakeAdapter(plan), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert outcome == 42
        assert runs == [21, 21, 21]
        assert adapter.calls["rollback"] == 2
        assert adapter.calls["status"] == 0


def test_conflict_answered_to_commit_reruns_without_asking() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        return FakeAdapter([("commit", Conflict("40001")), None]), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert outcome == 42
        assert runs == [21, 21]
        assert adapter.calls["status"] == 0


def test_permanent_fault_propagates_at_once() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard()
        return FakeAdapter([("work", Bug("syntax"))]), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert isinstance(outcome, Bug)
        assert runs == [21]
        assert adapter.calls["commit"] == 0
        assert adapter.calls["rollback"] == 1


def test_application_error_propagates_untouched() -> None:
    guard, _ = make_guard()
    adapter = FakeAdapter([])

    def work(conn: object) -> None:
        raise KeyError("app bug")

    with pytest.raises(KeyError):
        run_transaction(guard, adapter, work)
    assert adapter.calls["open"] == 1
    assert adapter.calls["rollback"] == 1


def test_unavailable_until_attempts_run_out_raises_database_unavailable() -> None:
    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard(attempts=3)
        return FakeAdapter([("open", Lost("refused"))] * 10), guard, clock

    for adapter, outcome, runs in _run_both(make):
        assert isinstance(outcome, outlast.DatabaseUnavailable)
        assert not isinstance(outcome, outlast.CommitOutcomeUnknown)
        assert outcome.fault is not None and outcome.fault.reason == "connection_lost"
        assert adapter.calls["open"] == 3
        assert runs == []


def test_breaker_open_fails_fast_without_opening_a_connection() -> None:
    guard = outlast.Guard(
        "tx-breaker",
        retry=outlast.Retry(attempts=1),
        breaker=outlast.Breaker(failure_threshold=1),
        listeners=(),
        classifier=make_guard()[0]._classifier,
    )
    guard.record_failure(Lost("down"))
    adapter = FakeAdapter([])
    with pytest.raises(outlast.DatabaseUnavailable):
        run_transaction(guard, adapter, lambda conn: 1)
    assert adapter.calls["open"] == 0


class _HookedAdapter(FakeAdapter):
    """A pool's error hook reports the lost COMMIT to the Guard before the machine sees it."""

    guard: outlast.Guard | None = None

    def commit(self, handle: Any) -> None:
        try:
            super().commit(handle)
        except Exception as exc:
            assert self.guard is not None
            self.guard.record_failure(exc, op="hook")
            raise


@pytest.mark.parametrize(
    ("statuses", "outages"),
    [([COMMITTED], 0), ([ABORTED], 1), ([Lost("down")] * 20, 1)],
    ids=["committed", "aborted", "unknown"],
)
def test_a_lost_commit_is_judged_by_its_outcome_once(statuses: list[Any], outages: int) -> None:
    """Found committed: a success; aborted or never settled: one failure, not two."""

    def make() -> tuple[FakeAdapter, outlast.Guard, Any]:
        guard, clock = make_guard(timeout=0.25)
        fresh = [Lost(*s.args) if isinstance(s, Lost) else s for s in statuses]  # one mark each
        adapter = _HookedAdapter([("commit", Lost("gone")), None], fresh)
        adapter.guard = guard
        return adapter, guard, clock

    for adapter, outcome, _runs in _run_both(make):
        guard = adapter.guard
        assert guard is not None
        assert guard.state.outages == outages
        if outages and isinstance(outcome, outlast.CommitOutcomeUnknown):
            # counted with the error itself: a web layer meeting it counts nothing more
            assert counted_by(outcome, guard)
            assert guard.state.up is False
        else:
            assert outcome == 42
            assert guard.state.up is True
