"""A supervised task's record, its status snapshot and the context it runs with.

Shared by the thread and asyncio supervisors (`_supervise_core`): nothing here
starts a thread or touches an event loop.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import datetime
import logging
import random
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

from outlast._core.faults.errors import ConfigurationError
from outlast._core.faults.redact import redact
from outlast._core.guard.backoff import Backoff
from outlast._core.timing.clock import waits_disabled
from outlast._core.timing.durations import seconds

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_STOP_TIMEOUT",
    "DEFAULT_WITHIN",
    "RESTART_POLICIES",
    "UNSET",
    "OnFailure",
    "Record",
    "RestartPolicy",
    "TaskContext",
    "TaskState",
    "TaskStatus",
    "_Unset",
    "_current",
    "as_backoff",
    "beat",
    "current",
    "describe_error",
    "logger",
    "restart_delay",
    "seconds",
    "wall",
]

logger = logging.getLogger("outlast")

TaskState = Literal["running", "restarting", "stalled", "failed", "stopped", "finished"]
RestartPolicy = Literal["always", "on_failure", "never"]
OnFailure = Literal["escalate"] | Callable[["TaskStatus"], object] | None

RESTART_POLICIES: Final = ("always", "on_failure", "never")
#: Seconds; the defaults a `Supervisor()` uses when `start()` does not override them.
DEFAULT_MAX_RESTARTS: Final = 10
DEFAULT_WITHIN: Final = 300.0
DEFAULT_STOP_TIMEOUT: Final = 10.0
#: 0.5 s, 1 s, 2 s, ... up to 30 s between restarts (each shortened by up to half).
DEFAULT_BACKOFF: Final = Backoff(initial=0.5, multiplier=2.0, cap=30.0, jitter=0.5)


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<default>"


UNSET: Final = _Unset()


def as_backoff(value: Backoff | float | datetime.timedelta | None) -> Backoff | None:
    """`None`/0 mean "restart at once"; a number is a constant delay."""
    if value is None:
        return None
    if isinstance(value, float | int | datetime.timedelta) and not isinstance(value, bool):
        delay = seconds(value, "backoff")
        if delay == 0:
            return None
        return Backoff(initial=delay, multiplier=1.0, cap=delay, jitter=0.0)
    if isinstance(value, Backoff):
        return value
    raise ConfigurationError("backoff must be an outlast.Backoff, a number of seconds or None")


def restart_delay(backoff: Backoff | None, restart: int) -> float:
    """The wait before restart number `restart` (1-based) in the current window."""
    if backoff is None or waits_disabled():
        return 0.0
    return backoff.delay(restart, random.random())


def wall(ts: float | None) -> str | None:
    """A wall-clock timestamp as ISO 8601 UTC (None stays None)."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of one supervised task; `as_dict()` is JSON-serialisable."""

    name: str
    kind: Literal["thread", "task"]
    state: TaskState
    restarts: int
    """Restarts since the task was started (crashes and, under "always", returns)."""
    last_error: str | None
    """The last crash, redacted (`"ValueError: ..."`, or only the type name)."""
    last_error_at: float | None
    """Wall-clock time (epoch seconds) of the last crash."""
    last_heartbeat: float | None
    """Wall-clock time (epoch seconds) of the last `ctx.beat()` or (re)start."""
    heartbeat: float | None
    """The heartbeat limit in seconds, or None when the task is not watched."""
    started_at: float | None
    """Wall-clock time (epoch seconds) the current run began."""

    def as_dict(self) -> dict[str, Any]:
        """This status as a JSON-serialisable dict (timestamps in ISO 8601)."""
        age = None if self.last_heartbeat is None else max(0.0, time.time() - self.last_heartbeat)
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": wall(self.last_error_at),
            "last_heartbeat": wall(self.last_heartbeat),
            "heartbeat_age_s": None if age is None else round(age, 3),
            "heartbeat_limit_s": self.heartbeat,
            "started_at": wall(self.started_at),
        }


def describe_error(exc: BaseException) -> tuple[str, str]:
    """A one-line summary and the traceback text, both redacted (no passwords or
    SQL parameters: driver messages can carry both)."""
    summary = redact(f"{type(exc).__qualname__}: {exc}").replace("\n", " ")
    return summary, redact("".join(traceback.format_exception(exc)))


class Record:
    """The mutable state of one task. Guarded by the supervisor's lock, except
    `beat()` which only stores two floats."""

    __slots__ = (
        "backoff",
        "heartbeat",
        "idle",
        "kind",
        "last_beat",
        "last_beat_wall",
        "last_error",
        "last_error_at",
        "max_restarts",
        "name",
        "restart",
        "restart_times",
        "restarts",
        "stall_logged",
        "started_at",
        "state",
        "within",
    )

    def __init__(
        self,
        name: str,
        kind: Literal["thread", "task"],
        *,
        restart: RestartPolicy,
        backoff: Backoff | None,
        max_restarts: int | None,
        within: float,
        heartbeat: float | None,
    ) -> None:
        self.name = name
        self.kind: Literal["thread", "task"] = kind
        self.restart = restart
        self.backoff = backoff
        self.max_restarts = max_restarts
        self.within = within
        self.heartbeat = heartbeat
        self.state: TaskState = "running"
        self.restarts = 0
        self.restart_times: collections.deque[float] = collections.deque()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_beat = time.monotonic()
        self.last_beat_wall = time.time()
        self.started_at: float | None = None
        self.stall_logged = False
        self.idle = False  # inside ctx.sleep(): waiting on purpose is not a stall

    def beat(self) -> None:
        """Note a heartbeat now."""
        self.last_beat = time.monotonic()
        self.last_beat_wall = time.time()

    def begin_run(self) -> None:
        """Mark the start of a (re)run of the task's function (call with the lock held)."""
        self.state = "running"
        self.idle = False
        self.started_at = time.time()
        self.stall_logged = False
        self.beat()

    @property
    def live(self) -> bool:
        """True while the task runs or will run again (a second task of that name is refused)."""
        return self.state in ("running", "restarting", "stalled")

    def silent_for(self, now: float) -> float | None:
        """Seconds past the heartbeat limit, or None when not stalled."""
        if self.heartbeat is None or self.state != "running" or self.idle:
            return None
        silent = now - self.last_beat
        return silent if silent > self.heartbeat else None

    def snapshot(self, now: float) -> TaskStatus:
        """An immutable `TaskStatus` of this record at monotonic time `now`."""
        state: TaskState = "stalled" if self.silent_for(now) is not None else self.state
        return TaskStatus(
            name=self.name,
            kind=self.kind,
            state=state,
            restarts=self.restarts,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            last_heartbeat=self.last_beat_wall,
            heartbeat=self.heartbeat,
            started_at=self.started_at,
        )


class TaskContext:
    """What a supervised function receives: its name, the stop signal, `beat()`.

    `ThreadTaskContext` adds a blocking ``sleep()``, `AsyncTaskContext` an
    awaitable one. Inside a task, `outlast.supervise.current()` returns it too.
    """

    __slots__ = ("_record", "_stopping")

    def __init__(self, record: Record, stopping: Callable[[], bool]) -> None:
        self._record = record
        self._stopping = stopping

    @property
    def name(self) -> str:
        """The task's name (also its thread's or asyncio Task's name)."""
        return self._record.name

    @property
    def restarts(self) -> int:
        """How many times this task has been restarted so far."""
        return self._record.restarts

    @property
    def stopping(self) -> bool:
        """True once the supervisor was asked to stop: return soon."""
        return self._stopping()

    def beat(self) -> None:
        """Record a heartbeat (cheap: call it every iteration)."""
        self._record.beat()

    @contextlib.contextmanager
    def _resting(self) -> Iterator[None]:
        """Around ``ctx.sleep()``: a task sleeping on purpose is not a stall; waking is a beat."""
        record = self._record
        record.idle = True
        try:
            yield
        finally:
            record.idle = False
            record.beat()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} stopping={self.stopping}>"


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "outlast_supervised_task", default=None
)


def current() -> TaskContext | None:
    """The context of the supervised task running this code, or None outside one."""
    return _current.get()


def beat() -> None:
    """Heartbeat for the current supervised task; a no-op outside one."""
    ctx = _current.get()
    if ctx is not None:
        ctx.beat()
