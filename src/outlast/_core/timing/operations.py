"""How long database operations take: OpenTelemetry's ``db.client.operation.duration``.

An *operation* is one exchange a hardened connection has with the server (a
statement with its results, a COMMIT, a ROLLBACK); the hardened pools and
engines time it where they already bound it by a socket deadline. Timing is
off until an exporter turns it on (`OPERATIONS.enable()`), so a service that
exports no metrics pays one attribute check per statement.

Buckets are OpenTelemetry's advice for this instrument, in seconds. Labels are
bounded: the Guard's name, the driver, and the error kind (``""`` on success,
else the `Fault` kind's value, e.g. ``unavailable``).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from outlast._core.faults.classify import classify

__all__ = ["BUCKETS", "OPERATIONS", "OperationHistogram", "Operations", "error_kind"]

BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class OperationHistogram:
    """Cumulative-free bucket counts (one per bound, then +Inf), sum and count."""

    guard: str
    driver: str
    error: str
    buckets: tuple[int, ...]
    total: float
    count: int


class Operations:
    """The process-wide operation histograms, keyed by (guard, driver, error)."""

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._data: dict[tuple[str, str, str], list[float]] = {}
        self._sinks: tuple[Callable[[str, str, float, str], object], ...] = ()

    def enable(self, sink: Callable[[str, str, float, str], object] | None = None) -> None:
        """Start timing; `sink(guard, driver, seconds, error)` also hears each operation."""
        if sink is not None and sink not in self._sinks:
            self._sinks = (*self._sinks, sink)
        self.enabled = True

    def set_sinks(self, sinks: tuple[Callable[[str, str, float, str], object], ...]) -> None:
        """Replace the sinks (for benchmarks and tests that compare with and without)."""
        self._sinks = sinks

    def observe(self, guard: str | None, driver: str, seconds: float, error: str = "") -> None:
        """Record one operation of `seconds` (call only when `enabled`)."""
        key = (guard or "", driver, error)
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            row = self._data.get(key)
            if row is None:
                row = self._data[key] = [0.0] * (len(BUCKETS) + 3)
            row[index] += 1
            row[-2] += seconds
            row[-1] += 1
        for sink in self._sinks:
            try:
                sink(key[0], driver, seconds, error)
            except Exception:  # an exporter's failure must never fail a statement
                pass

    def snapshot(self) -> list[OperationHistogram]:
        with self._lock:
            items = [(key, list(row)) for key, row in self._data.items()]
        return [
            OperationHistogram(
                guard, driver, error, tuple(int(n) for n in row[:-2]), row[-2], int(row[-1])
            )
            for (guard, driver, error), row in sorted(items)
        ]


def error_kind(exc: BaseException) -> str:
    """The ``error`` label of a failed operation: its fault kind, else ``other``."""
    fault = classify(exc)
    return fault.kind.value if fault is not None else "other"


OPERATIONS = Operations()
"""The process-wide histograms."""
