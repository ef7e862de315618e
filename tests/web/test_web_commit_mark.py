"""The request's "COMMIT unresolved" mark, driven by the transaction machine (pure logic).

A scripted adapter plays the driver; the Guard has a manual clock. What is
checked: while a request's COMMIT is in flight or being resolved, and when
the request fails before the outcome is known, `commit_outcome_pending()`
is true and any database error maps to the OUTCOME_UNKNOWN 503; once the
outcome is known (committed, aborted, or answered with an error) it is not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import outlast
from outlast import Backoff, Fault, FaultKind, Retry
from outlast._core.timing import budget as budgets
from outlast._core.transactions.adapters import StatusReply
from outlast._core.transactions.machine import arun_transaction, run_transaction
from outlast._core.web import calls, mapping
from outlast.testing import ManualClock


class Lost(Exception):
    """The fake driver's "connection lost"."""


class Conflict(Exception):
    """The fake driver's serialization failure."""


_KINDS = {
    Lost: (FaultKind.UNAVAILABLE, "connection_lost"),
    Conflict: (FaultKind.CONFLICT, "serialization_failure"),
}


def _classifier(exc: BaseException) -> Fault | None:
    hit = _KINDS.get(type(exc))  # type: ignore[call-overload]
    if hit is None:
        return None
    return Fault(hit[0], hit[1], None, "statement", True, hit[1])


def _guard() -> outlast.Guard:
    return outlast.Guard(
        "mark",
        retry=Retry(attempts=5, timeout=10.0, backoff=Backoff(initial=0.1, cap=0.5)),
        breaker=outlast.Breaker(enabled=False),
        classifier=_classifier,
        clock=ManualClock(),
        listeners=(),
    )


class Script:
    """Commits fail or succeed in turn (`commits`); status answers come from `statuses`."""

    def __init__(self, commits: list[BaseException | None], statuses: list[Any]) -> None:
        self.commits = list(commits)
        self.statuses = list(statuses)
        self.seen_during_commit: list[bool] = []
        self.seen_during_status: list[bool] = []

    def open(self) -> Any:
        return object()

    def begin(self, handle: Any) -> Any:
        return handle

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        return "731", "boot-1"

    def commit(self, handle: Any) -> None:
        self.seen_during_commit.append(budgets.commit_outcome_pending())
        error = self.commits.pop(0)
        if error is not None:
            raise error

    def rollback(self, handle: Any) -> None:
        pass

    def close(self, handle: Any, *, discard: bool) -> None:
        pass

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        self.seen_during_status.append(budgets.commit_outcome_pending())
        reply = self.statuses.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        assert isinstance(reply, StatusReply)
        return reply


class AsyncScript(Script):
    async def open(self) -> Any:  # type: ignore[override]
        return Script.open(self)

    async def begin(self, handle: Any) -> Any:  # type: ignore[override]
        return handle

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:  # type: ignore[override]
        return Script.marker(self, handle)

    async def commit(self, handle: Any) -> None:  # type: ignore[override]
        Script.commit(self, handle)

    async def rollback(self, handle: Any) -> None:  # type: ignore[override]
        pass

    async def close(self, handle: Any, *, discard: bool) -> None:  # type: ignore[override]
        pass

    async def status(self, xid: str, *, timeout: float) -> StatusReply:  # type: ignore[override]
        return Script.status(self, xid, timeout=timeout)


@pytest.fixture
def request_budget() -> Iterator[None]:
    token = budgets.RequestBudget(5.0).start()
    try:
        yield
    finally:
        budgets.RequestBudget.finish(token)


def _body(exc: BaseException) -> dict[str, Any]:
    mapped = mapping.map_exception(exc)
    assert mapped is not None and mapped.status == 503
    return dict(json.loads(mapped.body))


REFUSED = outlast.DatabaseUnavailable("breaker open", retry_after=1.0)
COMMITTED = StatusReply("committed", "boot-1")
ABORTED = StatusReply("aborted", "boot-1")


def _run(script: Script) -> Any:
    if isinstance(script, AsyncScript):
        return asyncio.run(_arun(script))
    return run_transaction(_guard(), script, lambda conn: "value")


async def _arun(script: AsyncScript) -> Any:
    async def work(conn: Any) -> str:
        return "value"

    # asyncio.run copies the context: the request's state object is shared.
    return await arun_transaction(_guard(), script, work)


@pytest.mark.parametrize("flavour", [Script, AsyncScript])
def test_a_resolution_refused_by_the_breaker_leaves_the_request_marked(
    flavour: type[Script], request_budget: None
) -> None:
    script = flavour([Lost()], [Lost()] + [REFUSED] * 200)
    # The breaker refusing the question says nothing about the COMMIT.
    with pytest.raises(outlast.CommitOutcomeUnknown) as info:
        _run(script)
    assert "circuit breaker open" in str(info.value)
    assert script.seen_during_commit == [True]
    assert len(script.seen_during_status) > 2 and all(script.seen_during_status)
    assert budgets.commit_outcome_pending()
    assert _body(info.value)["error"] == "OUTCOME_UNKNOWN"
    # Whatever fails the request now (here: its budget) says so too.
    assert _body(calls.budget_exceeded(None))["error"] == "OUTCOME_UNKNOWN"


@pytest.mark.parametrize("flavour", [Script, AsyncScript])
def test_a_settled_outcome_clears_the_mark(flavour: type[Script], request_budget: None) -> None:
    assert _run(flavour([None], [])) == "value"
    assert not budgets.commit_outcome_pending()
    assert _run(flavour([Lost()], [COMMITTED])) == "value"  # resolved: committed
    assert not budgets.commit_outcome_pending()
    script = flavour([Lost(), None], [ABORTED])  # resolved: aborted, then run again
    assert _run(script) == "value"
    assert script.seen_during_commit == [True, True]
    assert not budgets.commit_outcome_pending()
    assert _body(REFUSED)["error"] == "SERVICE_UNAVAILABLE"


@pytest.mark.parametrize("flavour", [Script, AsyncScript])
def test_a_commit_the_server_answered_with_an_error_is_not_unknown(
    flavour: type[Script], request_budget: None
) -> None:
    script = flavour([Conflict() for _ in range(10)], [])
    with pytest.raises(Conflict):  # re-run whole, then given up: the server's own error
        _run(script)
    assert len(script.seen_during_commit) > 1
    assert not budgets.commit_outcome_pending()


def test_a_cancelled_commit_leaves_the_request_marked(request_budget: None) -> None:
    class Hangs(AsyncScript):
        async def commit(self, handle: Any) -> None:  # type: ignore[override]
            await asyncio.sleep(30)

    async def main() -> None:
        async def work(conn: Any) -> str:
            return "value"

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await arun_transaction(_guard(), Hangs([], []), work)
        assert budgets.commit_outcome_pending()
        assert _body(calls.budget_exceeded(None))["error"] == "OUTCOME_UNKNOWN"

    asyncio.run(main())


def test_outside_a_request_nothing_is_marked() -> None:
    script = Script([Lost()], [Lost()] + [REFUSED] * 200)
    with pytest.raises(outlast.CommitOutcomeUnknown):
        _run(script)
    assert script.seen_during_commit == [False]
    assert not budgets.commit_outcome_pending()
    assert _body(REFUSED)["error"] == "SERVICE_UNAVAILABLE"
