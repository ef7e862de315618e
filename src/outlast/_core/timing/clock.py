"""Time, made injectable: the clock every Guard reads and sleeps through.

All waiting in outlast goes through a `Clock`, so tests can remove it:

- `SystemClock` (the default) reads `time.monotonic()` / `time.time()` and
  sleeps for real, unless the process-wide no-wait switch is on
  (`outlast.testing.no_waits()`), in which case every sleep returns at once
  (async sleeps still yield to the event loop once).
- `ManualClock` is a fake clock for deterministic tests: it only moves when
  someone sleeps on it or calls `advance()`, so a test of a 30-second backoff
  runs in microseconds and asserts exact timings.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock", "no_waits", "waits_disabled"]


@runtime_checkable
class Clock(Protocol):
    """What a Guard needs from time. Implementations must be thread-safe."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (for deadlines and breaker periods)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for event timestamps)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds`."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` (never blocks the loop)."""
        ...


# The process-wide switch; a one-element list so the hot check is one load.
_switch = [False]


def waits_disabled() -> bool:
    """True while `no_waits()` is in effect."""
    return _switch[0]


class no_waits:  # lowercase: used like a function, as stamina's set_testing()
    """Remove every real wait made through the system clock.

    Use it as a plain call (``outlast.testing.no_waits()`` in a conftest, or
    ``no_waits(False)`` to turn waits back on) or as a context manager that
    restores the previous setting on exit::

        with outlast.testing.no_waits():
            db.call(flaky_query)        # retries happen back to back

    Retry limits and deadlines still apply; breaker open periods still use
    real time (they are not waits). Use `ManualClock` to control those.
    """

    __slots__ = ("_previous",)

    def __init__(self, enabled: bool = True) -> None:
        self._previous = _switch[0]
        _switch[0] = bool(enabled)

    def __enter__(self) -> no_waits:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _switch[0] = self._previous


class SystemClock:
    """The real clock (honours the no-wait switch)."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and not _switch[0]:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(0 if _switch[0] else max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A fake clock that moves only when slept on or advanced.

    `sleep()` and `asleep()` advance the clock by the requested time and
    return at once (`asleep` yields to the event loop once), and record each
    requested duration in `sleeps`. Shared safely by threads and tasks.
    """

    __slots__ = ("_lock", "_now", "_wall_offset", "sleeps")

    def __init__(self, start: float = 0.0, *, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = float(start)
        self._wall_offset = float(wall) - float(start)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (never backwards)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"
