"""Helpers for the Guard's pure-logic tests: faults without a driver, a recording listener."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import outlast
from outlast import Fault, FaultKind
from outlast.testing import ManualClock


class FakeDbError(Exception):
    """A stand-in for a driver error; its text holds a secret that must never be logged."""

    def __init__(self, fault: Fault) -> None:
        super().__init__("connect to postgresql://app:hunter2@db.internal/app failed")
        self.fault = fault


def fault(
    kind: FaultKind = FaultKind.UNAVAILABLE,
    *,
    phase: str = "connect",
    reason: str = "connection_refused",
    sqlstate: str | None = None,
) -> Fault:
    return Fault(
        kind=kind,
        reason=reason,
        sqlstate=sqlstate,
        phase=phase,  # type: ignore[arg-type]
        transient=kind is not FaultKind.PERMANENT,
        message=f"{reason} (redacted)",
    )


def err(kind: FaultKind = FaultKind.UNAVAILABLE, **kw: Any) -> FakeDbError:
    return FakeDbError(fault(kind, **kw))


def classify(exc: BaseException) -> Fault | None:
    return exc.fault if isinstance(exc, FakeDbError) else None


class Recorder:
    """A listener that keeps every event (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[outlast.Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: outlast.Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def names(self) -> list[str]:
        with self._lock:
            return [type(e).__name__ for e in self.events]


class Flaky:
    """A callable that raises the given errors in turn, then returns `result`."""

    def __init__(self, *errors: BaseException, result: object = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def make_guard(
    clock: ManualClock | None = None,
    *,
    recorder: Recorder | None = None,
    **options: Any,
) -> outlast.Guard:
    listeners: list[Callable[[outlast.Event], object]] = [outlast.log_event]
    if recorder is not None:
        listeners.append(recorder)
    return outlast.Guard(
        "test",
        classifier=classify,
        clock=clock if clock is not None else ManualClock(),
        listeners=listeners,
        **options,
    )
