"""Retry policy values: `Backoff` (how long to wait) and `Retry` (whether to).

Both are immutable (frozen dataclasses with slots): a policy is never mutated
by a call, so one value can be shared by every thread and task. Per-call
state (attempt number, first failure time) lives in the Guard's call frame.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from outlast._core.faults.errors import ConfigurationError
from outlast._core.faults.fault import Fault, FaultKind
from outlast._core.timing.durations import Seconds, seconds

__all__ = ["Backoff", "Retry"]


@dataclass(frozen=True, slots=True, init=False)
class Backoff:
    """Capped exponential backoff with jitter that does not collapse at the cap.

    The n-th retry (n = 1, 2, ...) waits ``base = min(cap, initial *
    multiplier ** (n - 1))`` shrunk by a random fraction of up to `jitter`:
    the delay is spread over ``[base * (1 - jitter), base]``. Jitter is applied
    *after* capping, so callers that reached the cap still spread out instead
    of all waking at the same instant.
    """

    initial: float
    multiplier: float
    cap: float
    jitter: float

    def __init__(
        self,
        *,
        initial: Seconds = 0.1,
        multiplier: float = 2.0,
        cap: Seconds = 2.0,
        jitter: float = 0.5,
    ) -> None:
        initial_s = seconds(initial, "initial", allow_zero=False)
        cap_s = seconds(cap, "cap", allow_zero=False)
        if not isinstance(multiplier, int | float) or not 1.0 <= multiplier < math.inf:
            raise ConfigurationError(f"multiplier must be a number >= 1, got {multiplier!r}")
        if not isinstance(jitter, int | float) or not 0.0 <= jitter <= 1.0:
            raise ConfigurationError(f"jitter must be between 0 and 1, got {jitter!r}")
        if cap_s < initial_s:
            raise ConfigurationError(f"cap ({cap_s}s) must be >= initial ({initial_s}s)")
        object.__setattr__(self, "initial", initial_s)
        object.__setattr__(self, "multiplier", float(multiplier))
        object.__setattr__(self, "cap", cap_s)
        object.__setattr__(self, "jitter", float(jitter))

    def base(self, retry: int) -> float:
        """The un-jittered delay before retry number `retry` (1-based)."""
        if retry < 1:
            raise ConfigurationError(f"retry must be >= 1, got {retry!r}")
        # Compare exponents instead of computing a huge power (no overflow).
        if self.multiplier > 1.0 and (retry - 1) * math.log(self.multiplier) >= math.log(
            self.cap / self.initial
        ):
            return self.cap
        return min(self.cap, self.initial * self.multiplier ** (retry - 1))

    def delay(self, retry: int, rand: float) -> float:
        """The delay before retry `retry`, for a uniform random `rand` in [0, 1)."""
        return self.base(retry) * (1.0 - self.jitter * rand)


class _Default:
    """The "not given" marker of `Retry`'s renamed option (None means "no limit")."""

    __slots__ = ()


_DEFAULT = _Default()
DEFAULT_RETRY_TIMEOUT = 5.0

_RETRIED_KINDS = frozenset({FaultKind.UNAVAILABLE, FaultKind.READ_ONLY})


@dataclass(frozen=True, slots=True, init=False)
class Retry:
    """When and how often a guarded call is retried.

    `attempts` counts every try, the first one included (``attempts=1``
    disables retries). `timeout` bounds the time spent retrying, counted from
    the first failure: a sleep that would end past that deadline is not
    started, the call gives up at once instead. ``timeout=None`` relies on
    `attempts` alone. A per-call ``timeout=`` (a web request's remaining
    budget) counts from the start of the call and replaces this one.
    (``deadline=`` is the deprecated name of `timeout`.)

    Which faults are retried follows the fault table: UNAVAILABLE and
    READ_ONLY when the statement was never sent (``fault.phase ==
    "connect"``) or the call is marked idempotent; CONFLICT always (the whole
    unit is re-run); TIMEOUT, COMMIT_UNKNOWN and PERMANENT never.
    """

    attempts: int
    timeout: float | None
    backoff: Backoff

    def __init__(
        self,
        *,
        attempts: int = 5,
        timeout: Seconds | _Default | None = _DEFAULT,
        backoff: Backoff | None = None,
        deadline: Seconds | _Default | None = _DEFAULT,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"attempts must be an integer >= 1, got {attempts!r}")
        if not isinstance(deadline, _Default):
            if not isinstance(timeout, _Default):
                raise ConfigurationError("give timeout= only (deadline= is its deprecated name)")
            warnings.warn(
                "Retry(deadline=) is deprecated: a deadline is an instant; use timeout=",
                DeprecationWarning,
                stacklevel=2,
            )
            timeout = deadline
        if isinstance(timeout, _Default):
            timeout = DEFAULT_RETRY_TIMEOUT
        timeout_s = seconds(timeout, "timeout", allow_none=True)
        if backoff is None:
            backoff = Backoff()
        elif not isinstance(backoff, Backoff):
            raise ConfigurationError(f"backoff must be an outlast.Backoff, got {backoff!r}")
        object.__setattr__(self, "attempts", attempts)
        object.__setattr__(self, "timeout", timeout_s)
        object.__setattr__(self, "backoff", backoff)

    @property
    def deadline(self) -> float | None:
        """Deprecated name of `timeout`."""
        return self.timeout

    @staticmethod
    def retryable(fault: Fault, idempotent: bool) -> bool:
        """Whether the fault table allows another try of the same call."""
        kind = fault.kind
        if kind in _RETRIED_KINDS:
            return idempotent or fault.phase == "connect"
        return kind is FaultKind.CONFLICT

    def next_sleep(
        self, failed: int, elapsed: float, timeout: float | None, rand: float
    ) -> float | None:
        """How long to sleep before the next try, or None to give up now.

        `failed` is how many tries have failed so far, `elapsed` the seconds
        already spent against `timeout` (None: no limit), `rand` a uniform
        random number in [0, 1). Never returns a sleep that ends past the
        deadline (the instant `timeout` runs out).
        """
        if failed >= self.attempts:
            return None
        delay = self.backoff.delay(failed, rand)
        if timeout is not None and elapsed + delay > timeout:
            return None
        return delay
