"""What a Guard knows about its database: `DatabaseState` and its tracker.

The database goes *down* on the first failure that means it is unwell
(UNAVAILABLE, READ_ONLY, COMMIT_UNKNOWN; TIMEOUT when the breaker counts
timeouts) and comes back *up* on the next healthy answer. A client-side
timeout says neither: it leaves the database *unanswered* (`unanswered_since`)
until the server answers something, so nobody reports it healthy on the
strength of silence. The tracker is
mutated only under the Guard's lock; `Guard.state` hands out immutable
snapshots, so readers never see a half-updated state.
"""

from __future__ import annotations

from dataclasses import dataclass

from outlast._core.faults.fault import Fault

__all__ = ["DatabaseState", "StateTracker"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseState:
    """A snapshot of one Guard's view of its database.

    Timestamps (`down_since`, `recovered_at`) are wall-clock seconds since the
    epoch; durations are seconds.
    """

    up: bool
    """False from the first failure of an outage until the next healthy answer."""
    down_since: float | None
    """When the current outage began (None while up)."""
    last_fault: Fault | None
    """The most recent counted fault (kept after recovery, for health output)."""
    outages: int
    """How many outages this Guard has seen."""
    downtime: float
    """Total seconds down, the current outage included."""
    attempts: int
    """Calls tried during the current outage, or during the last one while up."""
    failures: int
    """Counted failures since the Guard was created."""
    recovered_at: float | None
    """When the last outage ended."""
    breaker: str
    """The breaker state: "closed", "open" or "half_open"."""
    unanswered_since: float | None = None
    """When client-side timeouts began with no answer from the server since
    (a statement the client stopped waiting for; None once the server answers)."""

    @property
    def down(self) -> bool:
        return not self.up

    @property
    def answering(self) -> bool:
        """Up, and the server answered since the last client-side timeout."""
        return self.up and self.unanswered_since is None


class StateTracker:
    """Mutable outage bookkeeping (not thread-safe; the Guard holds its lock)."""

    __slots__ = (
        "attempts",
        "down_mono",
        "down_since",
        "downtime",
        "failures",
        "last_fault",
        "outages",
        "recovered_at",
        "unanswered_since",
        "up",
    )

    def __init__(self) -> None:
        self.up = True
        self.down_since: float | None = None
        self.down_mono = 0.0
        self.last_fault: Fault | None = None
        self.outages = 0
        self.downtime = 0.0
        self.attempts = 0
        self.failures = 0
        self.recovered_at: float | None = None
        self.unanswered_since: float | None = None

    def on_silence(self, wall: float) -> None:
        """Record a client-side timeout: no answer, neither health nor outage."""
        if self.unanswered_since is None:
            self.unanswered_since = wall

    def on_failure(self, fault: Fault, mono: float, wall: float) -> bool:
        """Record a counted failure. Returns True when the database just went down."""
        self.failures += 1
        self.last_fault = fault
        if self.up:
            self.up = False
            self.down_since = wall
            self.down_mono = mono
            self.outages += 1
            self.attempts = 1
            return True
        self.attempts += 1
        return False

    def on_success(self, mono: float, wall: float) -> float | None:
        """Record a healthy answer. Returns the outage's length when it just ended."""
        self.unanswered_since = None
        if self.up:
            return None
        self.attempts += 1
        length = max(mono - self.down_mono, 0.0)
        self.downtime += length
        self.up = True
        self.down_since = None
        self.recovered_at = wall
        return length

    def snapshot(self, mono: float, breaker: str) -> DatabaseState:
        current = 0.0 if self.up else max(mono - self.down_mono, 0.0)
        return DatabaseState(
            up=self.up,
            down_since=self.down_since,
            last_fault=self.last_fault,
            outages=self.outages,
            downtime=self.downtime + current,
            attempts=self.attempts,
            failures=self.failures,
            recovered_at=self.recovered_at,
            breaker=breaker,
            unanswered_since=self.unanswered_since,
        )
