"""How fast a number grows: a least-squares slope over a sliding time window.

Retained WAL grows in a saw-tooth when a consumer acknowledges in batches,
and in steps when it is measured once a minute; a slope fitted over every
sample of the last few minutes follows the trend without jumping at each
tooth (the same idea as Prometheus' ``deriv()``/``predict_linear()``).
"""

from __future__ import annotations

from collections import deque

__all__ = ["RateWindow"]


class RateWindow:
    """Samples ``(t, value)`` kept for `window` seconds; `rate()` is their slope per second."""

    __slots__ = ("_samples", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        """Record `value` at monotonic time `t` and forget samples older than the window."""
        samples = self._samples
        if samples and t <= samples[-1][0]:
            samples.pop()  # same instant (or a clock that did not move): keep the newest
        samples.append((t, value))
        while len(samples) > 2 and t - samples[0][0] > self.window:
            samples.popleft()

    def clear(self) -> None:
        self._samples.clear()

    @property
    def span(self) -> float:
        """Seconds between the oldest and newest sample kept."""
        if len(self._samples) < 2:
            return 0.0
        return self._samples[-1][0] - self._samples[0][0]

    def rate(self) -> float | None:
        """Units per second over the window; None with fewer than two samples."""
        samples = self._samples
        n = len(samples)
        if n < 2 or self.span <= 0:
            return None
        t0 = samples[0][0]
        mean_t = sum(t - t0 for t, _ in samples) / n
        mean_v = sum(v for _, v in samples) / n
        var = sum((t - t0 - mean_t) ** 2 for t, _ in samples)
        if var <= 0:
            return None
        cov = sum((t - t0 - mean_t) * (v - mean_v) for t, v in samples)
        return cov / var
