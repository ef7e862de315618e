"""`outlast.loop`: periodic background loops that ride out database outages.

::

    @outlast.loop(every=1.0, guard=db)
    def sync_leads() -> None: ...

    sync_leads.start(supervisor)        # a supervised thread (or task, for async def)
    sync_leads.run_forever(stop_event)  # or in the calling thread until the event is set

One tick calls the function. A database fault (classified by the Guard, or by
`outlast.classify` without one) starts an *outage*: the loop logs ``[DB_DOWN]``
once, reports every failure to the Guard, backs off with the Guard's policy, and
on the first good tick logs ``[DB_RECOVERED] ... downtime=...`` once and goes back
to its period. Any other exception is logged (``[LOOP_ERROR]``) and the loop goes
on -- also a CancelledError that a tick let out without the loop's own task
being cancelled (it awaited a future something else cancelled). `_Ticker`
holds that logic for both the sync and the async loop.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast, overload

from outlast._core.faults.classify import classify
from outlast._core.faults.errors import ConfigurationError, DatabaseUnavailable
from outlast._core.faults.fault import Fault, FaultKind
from outlast._core.guard.backoff import Backoff
from outlast._core.guard.guard import Guard
from outlast._core.timing.clock import waits_disabled
from outlast._core.timing.durations import seconds

from .record import beat, describe_error
from .tasks import AsyncSupervisor, AsyncTaskContext, _stopped_within, cancel_requested
from .threads import Supervisor, ThreadTaskContext

__all__ = ["AsyncLoop", "Loop", "loop"]

logger = logging.getLogger("outlast")

R = TypeVar("R")
F = TypeVar("F", bound=Callable[[], Any])

#: Faults that mean "the database is unwell" (an outage), as the Guard counts them.
_OUTAGE_KINDS = frozenset({FaultKind.UNAVAILABLE, FaultKind.READ_ONLY, FaultKind.COMMIT_UNKNOWN})
#: Backoff of a loop without a Guard (the Guard's default policy).
_DEFAULT_BACKOFF = Backoff()


def _s(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


class _Ticker:
    """Outage bookkeeping and logging for one running loop (sync or async)."""

    __slots__ = ("_attempts", "_down_since", "_loop", "_tick_started")

    def __init__(self, loop: _LoopBase[Any]) -> None:
        self._loop = loop
        self._attempts = 0
        self._down_since: float | None = None
        self._tick_started = 0.0

    def begin(self) -> float | None:
        """Before a tick: None to run it, or seconds to wait (breaker open)."""
        self._tick_started = time.monotonic()
        guard = self._loop.guard
        if guard is None:
            return None
        try:
            guard.check()
        except DatabaseUnavailable as exc:
            return self._outage(exc, exc.fault, retry_after=exc.retry_after)
        return None

    def succeeded(self) -> float:
        """After a good tick: report it, log a recovery, return the wait to the next tick."""
        loop = self._loop
        guard = loop.guard
        guard_recovered = False
        if guard is not None:
            was_down = self._down_since is not None and not guard.state.up
            guard.record_success(op=loop.name)
            # The Guard reports its own down->up transition to its listeners (the
            # default one logs [DB_RECOVERED] op=<this loop>): do not log it twice.
            guard_recovered = was_down and guard.state.up
        if self._down_since is not None:
            downtime = time.monotonic() - self._down_since
            if not guard_recovered:
                logger.info(
                    "[DB_RECOVERED] op=%s after %d attempts downtime=%ss",
                    loop.name,
                    self._attempts + 1,
                    _s(downtime),
                    extra={
                        "outlast_event": "loop_recovered",
                        "op": loop.name,
                        "guard": None if guard is None else guard.name,
                        "attempts": self._attempts + 1,
                        "downtime": downtime,
                    },
                )
            self._down_since = None
            self._attempts = 0
        return self._until_next_tick()

    def failed(self, exc: BaseException) -> float:
        """After a tick raised: classify, report, log; return the wait before the next one."""
        loop = self._loop
        if isinstance(exc, DatabaseUnavailable):  # the function used the Guard itself
            return self._outage(exc, exc.fault, retry_after=exc.retry_after)
        if loop.guard is not None:
            fault = loop.guard.record_failure(exc, op=loop.name)
            outage = fault is not None and loop.guard.breaker.counts(fault)
        else:
            fault = classify(exc)
            outage = fault is not None and fault.kind in _OUTAGE_KINDS
        if outage:
            return self._outage(exc, fault, retry_after=0.0)
        summary, trace = describe_error(exc)
        logger.error(
            "[LOOP_ERROR] op=%s reason=%s err=%s\n%s",
            loop.name,
            None if fault is None else fault.reason,
            summary,
            trace.rstrip("\n"),
            extra={
                "outlast_event": "loop_error",
                "op": loop.name,
                "reason": None if fault is None else fault.reason,
            },
        )
        return self._until_next_tick()

    def _outage(self, exc: BaseException, fault: Fault | None, *, retry_after: float) -> float:
        loop = self._loop
        self._attempts += 1
        # Probe on the backoff schedule, not the period: a loop that ticks every
        # five minutes still notices within seconds that the database is back.
        delay = max(loop.backoff.delay(self._attempts, random.random()), retry_after)
        if waits_disabled():
            delay = 0.0
        if self._down_since is None:
            self._down_since = self._tick_started
            reason = fault.reason if fault is not None else type(exc).__name__
            logger.warning(
                "[DB_DOWN] op=%s try=%d sleep=%ss reason=%s",
                loop.name,
                self._attempts,
                _s(delay),
                reason,
                extra={
                    "outlast_event": "loop_down",
                    "op": loop.name,
                    "guard": None if loop.guard is None else loop.guard.name,
                    "reason": reason,
                    "sqlstate": None if fault is None else fault.sqlstate,
                    "sleep": delay,
                },
            )
        return delay

    def _until_next_tick(self) -> float:
        if waits_disabled():
            return 0.0
        return max(0.0, self._loop.every - (time.monotonic() - self._tick_started))


class _LoopBase(Generic[F]):
    """What `Loop` and `AsyncLoop` share: the settings, validated once."""

    def __init__(
        self,
        fn: F,
        *,
        every: float | datetime.timedelta,
        guard: Guard | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
        heartbeat: float | datetime.timedelta | None = None,
    ) -> None:
        self.every = seconds(every, "every", allow_zero=False)
        self.guard = guard
        self.name: str = name or getattr(fn, "__name__", None) or type(fn).__name__
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError("backoff must be an outlast.Backoff or None")
        if backoff is None:
            backoff = guard.retry.backoff if guard is not None else _DEFAULT_BACKOFF
        self.backoff: Backoff = backoff
        self.heartbeat = (
            None if heartbeat is None else seconds(heartbeat, "heartbeat", allow_zero=False)
        )
        self._fn = fn
        functools.update_wrapper(cast(Any, self), fn)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} every={self.every}s>"


class Loop(_LoopBase[Callable[[], R]], Generic[R]):
    """A periodic sync loop built by `outlast.loop` (call it to run one plain tick)."""

    def __call__(self) -> R:
        """Run the function once, with no outage handling."""
        return self._fn()

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Tick in the calling thread until `stop_event` is set (forever if None)."""
        stop = threading.Event() if stop_event is None else stop_event
        self._run(stop.is_set, stop.wait)

    def _supervised(self, ctx: ThreadTaskContext) -> None:
        # ctx.sleep(): waiting for the next tick is never reported as a stall.
        self._run(lambda: ctx.stopping, lambda delay: not ctx.sleep(delay))

    def _run(self, stopping: Callable[[], bool], wait: Callable[[float], bool]) -> None:
        ticker = _Ticker(self)
        while not stopping():
            delay = ticker.begin()
            if delay is None:
                try:
                    self._fn()
                except (Exception, asyncio.CancelledError) as exc:
                    # A thread is never cancelled: a CancelledError from the tick
                    # (an event loop it ran) is that tick's error, like any other.
                    delay = ticker.failed(exc)
                else:
                    delay = ticker.succeeded()
            beat()
            if wait(delay):
                return

    def start(self, supervisor: Supervisor, **options: Any) -> None:
        """Run the loop in a thread of `supervisor` (``restart="always"``).

        `options` go to `Supervisor.start` (`heartbeat` defaults to the loop's).
        """
        options.setdefault("heartbeat", self.heartbeat)
        supervisor.start(self.name, self._supervised, **options)


class AsyncLoop(_LoopBase[Callable[[], Awaitable[R]]], Generic[R]):
    """A periodic asyncio loop built by `outlast.loop` from an ``async def``."""

    async def __call__(self) -> R:
        """Await the function once, with no outage handling."""
        return await self._fn()

    async def run_forever(self, stop_event: asyncio.Event | None = None) -> None:
        """Tick in the current task until `stop_event` is set (forever if None)."""
        stop = asyncio.Event() if stop_event is None else stop_event
        await self._run(stop.is_set, lambda delay: _stopped_within(stop, delay))

    async def _supervised(self, ctx: AsyncTaskContext) -> None:
        async def wait(delay: float) -> bool:
            return not await ctx.sleep(delay)

        await self._run(lambda: ctx.stopping, wait)

    async def _run(
        self, stopping: Callable[[], bool], wait: Callable[[float], Awaitable[bool]]
    ) -> None:
        ticker = _Ticker(self)
        while not stopping():
            delay = ticker.begin()
            if delay is None:
                try:
                    await self._fn()
                except asyncio.CancelledError as exc:
                    if cancel_requested():
                        raise  # the loop's own task is being stopped
                    # The tick awaited something that someone else cancelled:
                    # that tick failed; the loop goes on.
                    delay = ticker.failed(exc)
                except Exception as exc:
                    delay = ticker.failed(exc)
                else:
                    delay = ticker.succeeded()
            beat()
            if await wait(delay):
                return

    def start(self, supervisor: AsyncSupervisor, **options: Any) -> None:
        """Run the loop as a task of `supervisor` (``restart="always"``)."""
        options.setdefault("heartbeat", self.heartbeat)
        supervisor.start(self.name, self._supervised, **options)


@overload
def loop(
    *,
    every: float | datetime.timedelta,
    guard: Guard | None = None,
    name: str | None = None,
    backoff: Backoff | None = None,
    heartbeat: float | datetime.timedelta | None = None,
) -> _LoopDecorator: ...


@overload
def loop(  # type: ignore[overload-overlap]  # an async def returns an Awaitable
    fn: Callable[[], Awaitable[R]],
    *,
    every: float | datetime.timedelta,
    guard: Guard | None = None,
    name: str | None = None,
    backoff: Backoff | None = None,
    heartbeat: float | datetime.timedelta | None = None,
) -> AsyncLoop[R]: ...


@overload
def loop(
    fn: Callable[[], R],
    *,
    every: float | datetime.timedelta,
    guard: Guard | None = None,
    name: str | None = None,
    backoff: Backoff | None = None,
    heartbeat: float | datetime.timedelta | None = None,
) -> Loop[R]: ...


def loop(
    fn: Callable[[], Any] | None = None,
    *,
    every: float | datetime.timedelta,
    guard: Guard | None = None,
    name: str | None = None,
    backoff: Backoff | None = None,
    heartbeat: float | datetime.timedelta | None = None,
) -> Any:
    """Turn a function into a periodic loop that survives database outages.

    ``@outlast.loop(every=1.0, guard=db)`` on a ``def`` builds a `Loop` (runs in
    a thread), on an ``async def`` an `AsyncLoop` (runs as a task). `every` is
    the period in seconds, counted from the start of one tick to the next;
    during an outage the loop retries on the backoff schedule instead (the
    Guard's ``retry.backoff``, or `backoff`; at least the breaker's
    ``retry_after`` while it is open), so it notices a recovery within one
    backoff step, then goes back to its period. `guard` receives every
    success and failure (``record_success`` / ``record_failure``);
    `heartbeat` (for ``start()``) marks the loop stalled when one tick runs
    longer than that (waiting between ticks never counts);
    `name` (default: the function's name) is the ``op=`` of log lines and the
    supervised task's name.

    Inside the function use the driver directly, not ``guard.call()``: the
    loop is the retry, and logs one ``[DB_DOWN]`` / ``[DB_RECOVERED]`` pair
    per outage.
    """
    options: dict[str, Any] = {
        "every": every,
        "guard": guard,
        "name": name,
        "backoff": backoff,
        "heartbeat": heartbeat,
    }
    # Validate at decoration time, even before a function is given.
    seconds(every, "every", allow_zero=False)
    if fn is None:
        return _LoopDecorator(options)
    return _LoopDecorator(options)(fn)


class _LoopDecorator:
    __slots__ = ("_options",)

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options

    @overload
    def __call__(self, fn: Callable[[], Awaitable[R]]) -> AsyncLoop[R]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(self, fn: Callable[[], R]) -> Loop[R]: ...

    def __call__(self, fn: Callable[[], Any]) -> Loop[Any] | AsyncLoop[Any]:
        if inspect.iscoroutinefunction(fn):
            return AsyncLoop(fn, **self._options)
        return Loop(fn, **self._options)
