"""What a Guard counted since it was created: the raw material of its metrics.

The Guard counts where it already decides -- a rejection where it rejects, a
fault where it judges it, a transition where it makes it -- so nothing is
counted twice and the success path pays nothing: a plain successful call is
only the ``_calls`` increment the Guard does anyway. `Guard.counters()` hands
out an immutable `GuardCounters` snapshot; ``outlast.prometheus`` and
``outlast.otel`` turn snapshots into metrics at scrape time.

Label values stay bounded: fault reasons come from outlast's own vocabulary;
a custom classifier inventing new reasons gets `MAX_REASONS` distinct ones,
the rest are counted as ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from outlast._core.faults.fault import Fault

__all__ = ["MAX_REASONS", "Counters", "GuardCounters"]

MAX_REASONS: Final = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardCounters:
    """A snapshot of a Guard's counters (monotonic since the Guard was created)."""

    calls: int
    """Calls through `call`/`acall`/`retrying`/`safe` (each call once, however many tries)."""
    rejected: int
    """Calls and admissions refused at once because the breaker was open (or half-open and busy)."""
    retries: int
    """Sleeps before another try (one per `RetryScheduled`)."""
    succeeded_after_retry: int
    """Calls that failed at least once, then succeeded."""
    failed_after_retry: int
    """Calls that failed after at least one retry."""
    failed_without_retry: int
    """Calls that failed on their first try and were not retried."""
    faults: MappingProxyType[tuple[str, str], int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """``(kind, reason)`` -> how many faults of it the Guard judged."""
    transitions: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """``"open"`` / ``"half_open"`` / ``"closed"`` -> how many times the breaker went there."""
    commits: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Lost COMMITs by outcome: ``"committed"``, ``"aborted"`` (resolved) or ``"unknown"``."""


class Counters:
    """The mutable counters (changed under the Guard's lock, except the two call counts)."""

    __slots__ = (
        "commits",
        "failed_after_retry",
        "failed_without_retry",
        "faults",
        "rejected",
        "retries",
        "slow_calls",
        "succeeded_after_retry",
        "transitions",
    )

    def __init__(self) -> None:
        # These two are incremented without the lock, on paths that must stay
        # cheap (like the Guard's own fast-path call count); two threads racing
        # may lose one increment of a metric, never a decision.
        self.slow_calls = 0
        self.rejected = 0
        self.retries = 0
        self.succeeded_after_retry = 0
        self.failed_after_retry = 0
        self.failed_without_retry = 0
        self.faults: dict[tuple[str, str], int] = {}
        self.transitions: dict[str, int] = {}
        self.commits: dict[str, int] = {}

    def fault(self, fault: Fault) -> None:
        key = (fault.kind.value, fault.reason)
        if key not in self.faults and len(self.faults) >= MAX_REASONS:
            key = (fault.kind.value, "other")
        self.faults[key] = self.faults.get(key, 0) + 1

    def transition(self, to: str) -> None:
        self.transitions[to] = self.transitions.get(to, 0) + 1

    def commit(self, outcome: str) -> None:
        self.commits[outcome] = self.commits.get(outcome, 0) + 1

    def snapshot(self, fast_calls: int) -> GuardCounters:
        return GuardCounters(
            calls=fast_calls + self.slow_calls,
            rejected=self.rejected,
            retries=self.retries,
            succeeded_after_retry=self.succeeded_after_retry,
            failed_after_retry=self.failed_after_retry,
            failed_without_retry=self.failed_without_retry,
            faults=MappingProxyType(dict(self.faults)),
            transitions=MappingProxyType(dict(self.transitions)),
            commits=MappingProxyType(dict(self.commits)),
        )
