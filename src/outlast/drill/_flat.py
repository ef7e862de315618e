"""Is a resource flat? The soak's judgement, pure logic over (time, value) samples.

A soak samples a service's resources every second while faults come and go.
A resource *leaks* when what it holds late in the run is more than what it held
early, after warm-up: the rule compares the median of the last window with the
median of the first window after warm-up, and fails only on growth beyond both
a relative bound (5 %) and an absolute one (a few threads, file descriptors or
connections; a few MiB of memory). Medians, not means or maxima: a fault every
few seconds makes every resource breathe (a pool drops its connections, a
request thread waits), and one sample caught mid-fault says nothing about a leak.
Shrinking is never a failure.

The latency of the no-database route drifts when its median over the last
window exceeds the first window's by more than the relative bound *and* the
absolute one (a loaded machine moves a millisecond median by a few ms).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ABSOLUTE_BOUNDS",
    "LATENCY_ABSOLUTE",
    "LATENCY_RELATIVE",
    "RELATIVE_BOUND",
    "RESOURCES",
    "Flatness",
    "Windows",
    "judge",
    "judge_latency",
    "windows_for",
]

#: What the soak samples, in the order it reports them, with their units.
RESOURCES: Mapping[str, str] = {
    "rss": "bytes",
    "fds": "fds",
    "threads": "threads",
    "tasks": "tasks",
    "pool": "connections",
    "server": "connections",
}

RELATIVE_BOUND = 0.05
#: Growth below these is noise, whatever the relative change (a pool that held
#: 3 connections and holds 4 has not leaked 33 %).
ABSOLUTE_BOUNDS: Mapping[str, float] = {
    "rss": 4 * 1024 * 1024,
    "fds": 3,
    "threads": 2,
    "tasks": 3,
    "pool": 2,
    "server": 2,
}
LATENCY_RELATIVE = 0.5
LATENCY_ABSOLUTE = 0.010  # seconds


@dataclass(frozen=True)
class Windows:
    """The first window (after warm-up) and the last one, in seconds since the start."""

    first: tuple[float, float]
    last: tuple[float, float]

    def as_dict(self) -> dict[str, list[float]]:
        return {"first": list(self.first), "last": list(self.last)}


def windows_for(duration: float) -> Windows:
    """A minute of warm-up, then the first minute against the last one.

    Shorter soaks scale down: warm-up and windows are a sixth of the run each
    (15 s in a 90-second soak), so at least half of the run lies between them.
    """
    if duration <= 0:
        raise ValueError("a soak lasts more than 0 seconds")
    w = min(60.0, duration / 6.0)
    return Windows(first=(w, 2 * w), last=(duration - w, duration))


@dataclass(frozen=True)
class Flatness:
    """One resource's verdict: the medians of both windows and what decided."""

    name: str
    unit: str
    first: float | None
    last: float | None
    samples: int
    passed: bool | None  # None: not measured
    detail: str

    @property
    def growth(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        return self.last - self.first

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "first": self.first,
            "last": self.last,
            "growth": self.growth,
            "samples": self.samples,
            "passed": self.passed,
            "detail": self.detail,
        }


def _in(series: Sequence[tuple[float, float | None]], span: tuple[float, float]) -> list[float]:
    lo, hi = span
    return [v for t, v in series if v is not None and lo <= t < hi]


def fmt(value: float, unit: str) -> str:
    """A value for people: MiB for bytes, ms for seconds, a number otherwise."""
    if unit == "bytes":
        return f"{value / 1024 / 1024:.1f} MiB"
    if unit == "seconds":
        return f"{value * 1000:.1f} ms"
    return f"{value:g}"


def _verdict(
    name: str,
    unit: str,
    first_values: list[float],
    last_values: list[float],
    *,
    relative: float,
    absolute: float,
    samples: int,
) -> Flatness:
    if not first_values or not last_values:
        return Flatness(name, unit, None, None, samples, None, "not measured")
    first = statistics.median(first_values)
    last = statistics.median(last_values)
    growth = last - first
    limit = max(abs(first) * relative, absolute)
    passed = growth <= limit
    pct = f" ({growth / first:+.1%})" if first else ""
    detail = (
        f"{fmt(first, unit)} -> {fmt(last, unit)}{pct}"
        if passed
        else f"grew {fmt(first, unit)} -> {fmt(last, unit)}{pct}, more than "
        f"{relative:.0%} and more than {fmt(absolute, unit)}"
    )
    return Flatness(name, unit, first, last, samples, passed, detail)


def judge(
    name: str,
    series: Sequence[tuple[float, float | None]],
    windows: Windows,
    *,
    unit: str | None = None,
    relative: float = RELATIVE_BOUND,
    absolute: float | None = None,
) -> Flatness:
    """Whether ``series`` (time, value; None: not read at that second) stayed flat."""
    return _verdict(
        name,
        unit or RESOURCES.get(name, ""),
        _in(series, windows.first),
        _in(series, windows.last),
        relative=relative,
        absolute=ABSOLUTE_BOUNDS.get(name, 0.0) if absolute is None else absolute,
        samples=sum(1 for _, v in series if v is not None),
    )


def judge_latency(
    latencies: Sequence[tuple[float, float]],
    windows: Windows,
    *,
    relative: float = LATENCY_RELATIVE,
    absolute: float = LATENCY_ABSOLUTE,
) -> Flatness:
    """Whether the no-database route's latency (start time, seconds) did not drift."""
    return _verdict(
        "latency",
        "seconds",
        _in(latencies, windows.first),
        _in(latencies, windows.last),
        relative=relative,
        absolute=absolute,
        samples=len(latencies),
    )
