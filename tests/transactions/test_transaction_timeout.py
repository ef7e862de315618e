"""`Guard.transaction(..., timeout=)` / `atransaction`: a per-call timeout (pure logic).

A web request passes the rest of its budget; the transaction must neither retry
nor keep asking about a lost COMMIT past it. Runs through the Guard's public
methods (a fake source registered with `outlast.register_adapter`), both twins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from tx_fakes import AsyncFakeAdapter, FakeAdapter, Lost, make_guard

import outlast
from outlast._core.transactions.adapters import StatusReply

COMMITTED = StatusReply("committed", "boot-1")

outlast.register_adapter(lambda s: isinstance(s, FakeAdapter), lambda s: s)
outlast.register_adapter(lambda s: isinstance(s, FakeAdapter), AsyncFakeAdapter, asynchronous=True)


def _both(
    make: Callable[[], FakeAdapter], *, timeout: float | None, guard_timeout: float | None = 10.0
) -> list[tuple[FakeAdapter, Any, float, list[int]]]:
    """(adapter, outcome or exception, clock at the end, fn runs) for sync and async."""
    out = []
    for mode in ("sync", "async"):
        guard, clock = make_guard(attempts=100, timeout=guard_timeout)
        adapter = make()
        runs: list[int] = []

        def work(conn: object, value: int, runs: list[int] = runs) -> int:
            runs.append(value)
            return value * 2

        async def awork(conn: object, value: int) -> int:
            return work(conn, value)

        try:
            if mode == "sync":
                outcome: Any = guard.transaction(adapter, work, 21, timeout=timeout)
            else:
                outcome = asyncio.run(guard.atransaction(adapter, awork, 21, timeout=timeout))
        except Exception as exc:
            outcome = exc
        out.append((adapter, outcome, clock.monotonic(), runs))
    return out


def test_per_call_deadline_bounds_the_commit_resolution() -> None:
    def make() -> FakeAdapter:
        return FakeAdapter([("commit", Lost("gone"))], [Lost("down")] * 100)

    for adapter, outcome, now, runs in _both(make, timeout=1.0):
        assert isinstance(outcome, outlast.CommitOutcomeUnknown)
        assert outcome.xid == "731"
        assert runs == [21]
        assert adapter.calls["commit"] == 1
        assert adapter.calls["status"] >= 2  # it did ask again within the timeout
        assert now <= 1.0  # ... but never slept past it (the Guard's own is 10 s)


def test_without_a_per_call_deadline_the_guards_deadline_applies() -> None:
    def make() -> FakeAdapter:
        return FakeAdapter([("commit", Lost("gone"))], [Lost("down")] * 100)

    for _adapter, outcome, now, _runs in _both(make, timeout=None, guard_timeout=3.0):
        assert isinstance(outcome, outlast.CommitOutcomeUnknown)
        assert 1.0 < now <= 3.0


def test_per_call_deadline_bounds_whole_transaction_retries() -> None:
    def make() -> FakeAdapter:
        return FakeAdapter([("open", Lost("refused"))] * 100)

    for adapter, outcome, now, runs in _both(make, timeout=0.5, guard_timeout=None):
        assert isinstance(outcome, outlast.DatabaseUnavailable)
        assert runs == []
        assert 1 < adapter.calls["open"] < 10
        assert now <= 0.5


def test_a_spent_deadline_still_asks_once_about_a_lost_commit() -> None:
    def make() -> FakeAdapter:
        return FakeAdapter([("commit", Lost("gone"))], [COMMITTED])

    for adapter, outcome, _now, runs in _both(make, timeout=0.0):
        assert outcome == 42  # resolved as committed: success, not an unknown
        assert runs == [21]
        assert adapter.calls["status"] == 1


@pytest.mark.parametrize("timeout", [0.0, 0.3])
def test_a_spent_deadline_gives_up_instead_of_retrying(timeout: float) -> None:
    def make() -> FakeAdapter:
        return FakeAdapter([("work", Lost("reset")), None])

    for adapter, outcome, _now, runs in _both(make, timeout=timeout):
        if timeout == 0.0:
            assert isinstance(outcome, outlast.DatabaseUnavailable)
            assert runs == [21] and adapter.calls["open"] == 1
        else:
            assert outcome == 42 and runs == [21, 21]
