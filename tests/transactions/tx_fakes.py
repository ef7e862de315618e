"""A scripted fake driver for the transaction state machine (pure logic, no I/O)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import outlast
from outlast import Backoff, Fault, FaultKind, Retry
from outlast._core.transactions.adapters import StatusReply
from outlast.testing import ManualClock


class Lost(Exception):
    """The fake driver's "connection lost"."""


class Conflict(Exception):
    """The fake driver's serialization failure."""


class Bug(Exception):
    """The fake driver's syntax error."""


_FAULTS = {
    Lost: (FaultKind.UNAVAILABLE, "connection_lost", "08006"),
    Conflict: (FaultKind.CONFLICT, "serialization_failure", "40001"),
    Bug: (FaultKind.PERMANENT, "syntax_error", "42601"),
}


def classifier(exc: BaseException) -> Fault | None:
    hit = _FAULTS.get(type(exc))  # type: ignore[call-overload]
    if hit is None:
        return None
    kind, reason, sqlstate = hit
    return Fault(kind, reason, sqlstate, "statement", kind is not FaultKind.PERMANENT, reason)


def make_guard(
    *, attempts: int = 5, timeout: float | None = 10.0
) -> tuple[outlast.Guard, ManualClock]:
    clock = ManualClock()
    guard = outlast.Guard(
        "tx",
        retry=Retry(attempts=attempts, timeout=timeout, backoff=Backoff(initial=0.1, cap=1.0)),
        breaker=outlast.Breaker(enabled=False),
        classifier=classifier,
        clock=clock,
        listeners=(),
    )
    return guard, clock


Step = BaseException | None


class FakeAdapter:
    """Each attempt follows a script: where it fails (or not), and status replies.

    `plan` is a list, one entry per attempt: ``None`` (succeeds), or
    ``(stage, exc)`` with stage in {"open", "work", "commit"}. `statuses` are
    the replies (StatusReply or exception) to successive status questions.
    """

    def __init__(
        self,
        plan: list[tuple[str, BaseException] | None],
        statuses: list[StatusReply | BaseException] | None = None,
        *,
        xid: str | None = "731",
        started: str = "boot-1",
        on_status: Callable[[], None] | None = None,
    ) -> None:
        self.plan = list(plan)
        self.statuses = list(statuses or [])
        self.xid = xid
        self.started = started
        self.calls: Counter[str] = Counter()
        self.on_status = on_status
        self.closed: list[bool] = []

    def _step(self, stage: str) -> None:
        step = self.plan[0] if self.plan else None
        if step is not None and step[0] == stage:
            self.plan.pop(0)
            raise step[1]

    def open(self) -> Any:
        self.calls["open"] += 1
        self._step("open")
        return "conn"

    def begin(self, handle: Any) -> Any:
        self.calls["begin"] += 1
        return handle

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        self._step("work")
        return self.xid, self.started

    def commit(self, handle: Any) -> None:
        self.calls["commit"] += 1
        self._step("commit")
        if self.plan and self.plan[0] is None:
            self.plan.pop(0)

    def rollback(self, handle: Any) -> None:
        self.calls["rollback"] += 1

    def close(self, handle: Any, *, discard: bool) -> None:
        self.closed.append(discard)

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        self.calls["status"] += 1
        assert timeout > 0
        if self.on_status is not None:
            self.on_status()
        reply = self.statuses.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


class AsyncFakeAdapter:
    """The same script, awaited."""

    def __init__(self, sync: FakeAdapter) -> None:
        self.sync = sync

    async def open(self) -> Any:
        return self.sync.open()

    async def begin(self, handle: Any) -> Any:
        return self.sync.begin(handle)

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:
        return self.sync.marker(handle)

    async def commit(self, handle: Any) -> None:
        self.sync.commit(handle)

    async def rollback(self, handle: Any) -> None:
        self.sync.rollback(handle)

    async def close(self, handle: Any, *, discard: bool) -> None:
        self.sync.close(handle, discard=discard)

    async def status(self, xid: str, *, timeout: float) -> StatusReply:
        return self.sync.status(xid, timeout=timeout)
