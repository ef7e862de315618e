"""The circuit breaker: a policy value (`Breaker`) and its state machine.

`Breaker` is an immutable policy. `BreakerCore` is the per-Guard state
machine; it does no locking, no I/O and never calls user code: the Guard
calls it under a small lock and runs user code (and listeners) outside it.

States::

    closed ──(N consecutive failures, or failure rate over the window)──> open
    open ──(open period elapsed)──> half_open: one probe admitted at a time
    half_open ──probe succeeds──> closed
    half_open ──probe fails──> open (for longer: the period grows per trip, up to a cap)

With `open_jitter`, each open period is shortened by a random share: the
breakers of a fleet (every worker of every container, each with its own
Guard) trip on the same outage at the same moment, and without jitter they
would all probe at the same moments too, a login burst from the whole fleet
every period. The cap stays the worst case, so recovery is never slower.

A probe that neither succeeds nor fails (cancelled, or a non-database error)
frees its slot for the next caller; a probe that runs longer than
`probe_timeout` is presumed stuck and another probe is admitted.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from outlast._core.faults.errors import ConfigurationError
from outlast._core.faults.fault import FOREIGN_REASONS, Fault, FaultKind
from outlast._core.timing.durations import Seconds, seconds

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker", "BreakerCore"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

ADMIT = 0
"""`BreakerCore.admit()`: a normal call may proceed. Positive values are probe tokens."""
REJECT = -1
"""`BreakerCore.admit()`: fail fast."""

_BUCKETS = 10
_UNWELL = frozenset({FaultKind.UNAVAILABLE, FaultKind.READ_ONLY, FaultKind.COMMIT_UNKNOWN})


@dataclass(frozen=True, slots=True, init=False)
class Breaker:
    """Circuit-breaker policy (immutable; share it freely).

    The breaker opens after `failure_threshold` consecutive failures, or when
    at least `min_calls` calls in the last `window` seconds saw a failure
    rate of `failure_rate` or more. Only faults that mean the database is
    unwell count: UNAVAILABLE, READ_ONLY, COMMIT_UNKNOWN, and TIMEOUT when
    `count_timeouts` is set. While open, calls fail at once with
    `DatabaseUnavailable`. After `open_for` seconds one probe is let through;
    each consecutive trip doubles (`open_multiplier`) the open period, up to
    `max_open_for`. `open_jitter` (0 to under 1) shortens each open period
    by up to that share at random, so many processes that tripped together
    probe at different moments. ``enabled=False`` keeps the statistics but
    never opens.
    """

    failure_threshold: int
    failure_rate: float
    window: float
    min_calls: int
    open_for: float
    max_open_for: float
    open_multiplier: float
    probe_timeout: float
    count_timeouts: bool
    enabled: bool
    open_jitter: float

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        failure_rate: float = 0.5,
        window: Seconds = 30.0,
        min_calls: int = 10,
        open_for: Seconds = 1.0,
        max_open_for: Seconds = 5.0,
        open_multiplier: float = 2.0,
        probe_timeout: Seconds = 30.0,
        count_timeouts: bool = False,
        enabled: bool = True,
        open_jitter: float = 0.0,
    ) -> None:
        for option, value in (("failure_threshold", failure_threshold), ("min_calls", min_calls)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{option} must be an integer >= 1, got {value!r}")
        if not isinstance(failure_rate, int | float) or not 0.0 < failure_rate <= 1.0:
            raise ConfigurationError(f"failure_rate must be in (0, 1], got {failure_rate!r}")
        if not isinstance(open_multiplier, int | float) or not 1.0 <= open_multiplier < math.inf:
            raise ConfigurationError(
                f"open_multiplier must be a number >= 1, got {open_multiplier!r}"
            )
        if (
            isinstance(open_jitter, bool)
            or not isinstance(open_jitter, int | float)
            or not 0.0 <= open_jitter < 1.0
        ):
            raise ConfigurationError(f"open_jitter must be in [0, 1), got {open_jitter!r}")
        open_s = seconds(open_for, "open_for", allow_zero=False)
        max_open_s = seconds(max_open_for, "max_open_for", allow_zero=False)
        if max_open_s < open_s:
            raise ConfigurationError(
                f"max_open_for ({max_open_s}s) must be >= open_for ({open_s}s)"
            )
        values: dict[str, object] = {
            "failure_threshold": failure_threshold,
            "failure_rate": float(failure_rate),
            "window": seconds(window, "window", allow_zero=False),
            "min_calls": min_calls,
            "open_for": open_s,
            "max_open_for": max_open_s,
            "open_multiplier": float(open_multiplier),
            "probe_timeout": seconds(probe_timeout, "probe_timeout", allow_zero=False),
            "count_timeouts": bool(count_timeouts),
            "enabled": bool(enabled),
            "open_jitter": float(open_jitter),
        }
        for name, converted in values.items():
            object.__setattr__(self, name, converted)

    def counts(self, fault: Fault) -> bool:
        """Whether `fault` means the database is unwell (and so counts as a failure)."""
        if fault.kind in _UNWELL:
            # A remote server this database reached for (postgres_fdw, dblink)
            # is not this database: it answered.
            return fault.reason not in FOREIGN_REASONS
        # The request's own budget running out is never the database's fault.
        return (
            self.count_timeouts
            and fault.kind is FaultKind.TIMEOUT
            and fault.reason != "request_budget_exceeded"
        )

    def open_period(self, trips: int) -> float:
        """How long the breaker stays open on its `trips`-th consecutive trip."""
        exponent = max(trips - 1, 0)
        if self.open_multiplier > 1.0 and exponent * math.log(self.open_multiplier) >= math.log(
            self.max_open_for / self.open_for
        ):
            return self.max_open_for
        return min(self.max_open_for, self.open_for * self.open_multiplier**exponent)

    def jittered_open_period(self, trips: int, rand: float) -> float:
        """`open_period` shortened by up to `open_jitter` of it; `rand` is uniform in [0, 1)."""
        return self.open_period(trips) * (1.0 - self.open_jitter * rand)


class BreakerCore:
    """The breaker's mutable state. Not thread-safe: the Guard holds its lock."""

    __slots__ = (
        "_buckets",
        "_last_failure",
        "_next_token",
        "_probe_started",
        "_probe_token",
        "_rand",
        "consecutive",
        "open_until",
        "opened_at",
        "policy",
        "state",
        "trips",
        "windowed",
    )

    def __init__(self, policy: Breaker, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rand = rand
        self.state = CLOSED
        self.consecutive = 0
        self.trips = 0  # consecutive trips without a successful close
        self.open_until = 0.0
        self.opened_at = 0.0
        self.windowed = False  # failures in the window: successes are being counted
        self._buckets: deque[list[int]] = deque()  # [bucket index, calls, failures]
        self._last_failure = -math.inf
        self._probe_token = 0
        self._probe_started = 0.0
        self._next_token = 0

    @property
    def healthy(self) -> bool:
        """Closed with nothing to watch: calls may skip the breaker entirely."""
        return self.state == CLOSED and self.consecutive == 0 and not self.windowed

    # -- admission ------------------------------------------------------------------

    def _probe_free(self, now: float) -> bool:
        return self._probe_token == 0 or now - self._probe_started >= self.policy.probe_timeout

    def admit(self, now: float) -> int:
        """ADMIT, REJECT, or a positive probe token (the caller is the probe)."""
        if self.state == CLOSED:
            return ADMIT
        if self.state == OPEN:
            if now < self.open_until:
                return REJECT
            self.state = HALF_OPEN
        if not self._probe_free(now):
            return REJECT
        self._next_token += 1
        self._probe_token = self._next_token
        self._probe_started = now
        return self._probe_token

    def would_admit(self, now: float) -> bool:
        """What `admit()` would say, without taking the probe slot."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now < self.open_until:
            return False
        return self._probe_free(now)

    def holds_probe(self, token: int) -> bool:
        """Is `token` the probe now in flight?"""
        return token > 0 and token == self._probe_token

    def release(self, token: int) -> None:
        """A probe ended without a verdict: let the next caller probe."""
        if token > 0 and token == self._probe_token:
            self._probe_token = 0

    def current_state(self, now: float) -> str:
        if self.state == OPEN and now >= self.open_until:
            return HALF_OPEN
        return self.state

    def retry_after(self, now: float) -> float:
        """Seconds until a probe would be admitted (0 when closed or a probe is free)."""
        if self.state == OPEN:
            return max(self.open_until - now, 0.0)
        if self.state == HALF_OPEN and not self._probe_free(now):
            stuck_in = self._probe_started + self.policy.probe_timeout - now
            return max(min(self.policy.open_for, stuck_in), 0.0)
        return 0.0

    # -- outcomes -----------------------------------------------------------------

    def on_success(self, now: float) -> bool:
        """Record a healthy answer. Returns True when this closed the breaker."""
        state = self.current_state(now)
        if state == OPEN:
            return False  # a call admitted before the trip; the probe decides
        if state == HALF_OPEN:
            self.state = CLOSED
            self.trips = 0
            self.consecutive = 0
            self._probe_token = 0
            self._clear_window()
            return True
        self.consecutive = 0
        if self.windowed:
            if now - self._last_failure > self.policy.window:
                self._clear_window()
            else:
                self._add(now, failed=False)
        return False

    def on_failure(self, now: float, baseline_calls: int = 0) -> bool:
        """Record a counted failure. Returns True when this opened the breaker.

        `baseline_calls` is how many calls went through the fast path since
        the window was last active: when the first failure arrives after a
        quiet period, their share of the window is added as successes (the
        fast path does not time-stamp calls).
        """
        self._last_failure = now
        if self.state == OPEN:
            return False
        if self.state == HALF_OPEN:
            return self._trip(now)
        self.consecutive += 1
        if not self.windowed:
            self.windowed = True
            if baseline_calls > 0:
                self._add(now, failed=False, count=baseline_calls)
        self._add(now, failed=True)
        if not self.policy.enabled:
            return False
        if self.consecutive >= self.policy.failure_threshold:
            return self._trip(now)
        calls = failures = 0
        for _, c, f in self._buckets:
            calls += c
            failures += f
        if calls >= self.policy.min_calls and failures >= self.policy.failure_rate * calls:
            return self._trip(now)
        return False

    def window_counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the current window (for tests and health output)."""
        self._prune(self._index(now))
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    # -- internals ----------------------------------------------------------------

    def _trip(self, now: float) -> bool:
        self.trips += 1
        self.state = OPEN
        self.opened_at = now
        policy = self.policy
        if policy.open_jitter:
            self.open_until = now + policy.jittered_open_period(self.trips, self._rand())
        else:
            self.open_until = now + policy.open_period(self.trips)
        self.consecutive = 0
        self._probe_token = 0
        self._clear_window()
        return True

    def _clear_window(self) -> None:
        self.windowed = False
        self._buckets.clear()

    def _index(self, now: float) -> int:
        return math.floor(now * _BUCKETS / self.policy.window)

    def _prune(self, index: int) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] <= index - _BUCKETS:
            buckets.popleft()

    def _add(self, now: float, *, failed: bool, count: int = 1) -> None:
        index = self._index(now)
        self._prune(index)
        buckets = self._buckets
        if buckets and buckets[-1][0] == index:
            bucket = buckets[-1]
        else:
            bucket = [index, 0, 0]
            buckets.append(bucket)
        bucket[1] += count
        if failed:
            bucket[2] += count
