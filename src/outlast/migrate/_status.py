"""`SchemaStatus`: what one run ended with, and the readiness hook for ``/health/ready``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ._holder import Holder
from ._state import SchemaState

__all__ = ["Outcome", "SchemaStatus"]

Outcome = Literal["applied", "at_head", "ahead", "pending"]


@dataclass
class SchemaStatus:
    """The result of `outlast.migrate.run`, usable as a readiness check.

    `outcome`: ``applied`` (this process migrated), ``at_head`` (nothing to
    do, or another process did it), ``ahead`` (the database holds migrations
    this code does not know: a newer release migrated it), ``pending`` (the
    wait ran out with ``on_timeout="unready"``; a background thread keeps
    going and flips the status to ready once the schema is there).

    `applied` lists what this process applied and saw committed; a step
    committed just before this process lost its connection is missing from it
    when the state could not be read again at once (the database's own
    record is the truth).

    Pass it as the web integrations'' ``ready=`` hook: ``/health/ready`` then
    answers 503 ``fail`` with ``output: "migrations pending: ..."`` until the
    schema reaches its target::

        status = outlast.migrate.run(runner, on_timeout="unready")
        OutlastFlask(app, guard, ready=status)
    """

    role: str
    outcome: Outcome
    state: SchemaState | None
    applied: tuple[str, ...] = ()
    leader: bool = False
    waited: float = 0.0
    holder: Holder | None = None
    ready_at: float | None = None
    applied_at: float | None = None
    _ready: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.outcome != "pending":
            self._ready.set()
            if self.ready_at is None:
                self.ready_at = time.time()

    @property
    def ready(self) -> bool:
        """True once the schema is at (or past) its target."""
        return self._ready.is_set()

    def __call__(self) -> bool:
        """`ready`, so the status itself is a ``ready=`` hook."""
        return self.ready

    def describe(self) -> str:
        """``migrations pending: 2 pending (database at 0002, head 0004)`` or the settled state."""
        with self._lock:
            state, outcome = self.state, self.outcome
        if outcome == "pending":
            what = state.describe() if state is not None else "schema state unknown"
            return f"migrations pending: {what}"
        return state.describe() if state is not None else outcome

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready (or `timeout` seconds); True when ready."""
        return self._ready.wait(timeout)

    def close(self) -> None:
        """Stop the background thread of an ``unready`` status (it stops by itself once ready)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)

    # ------------------------------------------------------------ internal

    def _settle(self, other: SchemaStatus) -> None:
        """Take the result of the background run and turn ready."""
        with self._lock:
            self.outcome = other.outcome
            self.state = other.state
            self.applied = other.applied
            self.leader = other.leader
            self.applied_at = other.applied_at
            self.ready_at = other.ready_at or time.time()
        self._ready.set()

    def _follow(self, run: Callable[[threading.Event], SchemaStatus | None]) -> None:
        """Run `run(stop)` in a daemon thread; settle with its result."""

        def target() -> None:
            result = run(self._stop)
            if result is not None and result.outcome != "pending":  # not stopped by close()
                self._settle(result)

        thread = threading.Thread(target=target, name="outlast-migrate-follow", daemon=True)
        self._thread = thread
        thread.start()
