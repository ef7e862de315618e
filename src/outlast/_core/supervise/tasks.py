"""`AsyncSupervisor`: the asyncio twin of `Supervisor`.

Same records, decisions, logs and reports (`_supervise_core`); here each task is
one `asyncio.Task` named after it for its whole life (a restart awaits the
function again inside the same Task), and `stop()` cancels what did not finish
within its timeout — unlike a thread, a Task can be cancelled. Only a
cancellation of the Task itself stops it: a CancelledError that escapes the
function without one (it awaited a future something else cancelled) is a
crash, logged and restarted like any other.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

from outlast._core.faults.errors import ConfigurationError
from outlast._core.guard.backoff import Backoff
from outlast._core.timing.durations import seconds

from .base import SupervisorBase
from .record import UNSET, Record, RestartPolicy, TaskContext, _current, _Unset

__all__ = ["AsyncSupervisor", "AsyncTaskContext"]

logger = logging.getLogger("outlast")

#: How long cancelled tasks get to unwind once `stop()`'s timeout has passed.
_CANCEL_GRACE = 1.0


def cancel_requested() -> bool:
    """Was the current Task itself asked to stop (``task.cancel()``), not merely handed
    a CancelledError by something it awaited?

    ``Task.cancelling()`` counts the cancellation requests still pending on the
    Task (Python 3.11+): the supervisor's `stop()`, ``asyncio.run`` shutting
    down, or anyone holding the Task. A future that someone else cancelled
    raises CancelledError in whoever awaits it without touching that count.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _stopped_within(event: asyncio.Event, delay: float) -> bool:
    """Wait up to `delay` seconds for `event`; True if it was set."""
    if event.is_set():
        return True
    if delay <= 0:
        await asyncio.sleep(0)  # always yield: a task that crashes at once must not starve the loop
        return event.is_set()
    try:
        await asyncio.wait_for(event.wait(), delay)
    except TimeoutError:
        return event.is_set()
    return True


class AsyncTaskContext(TaskContext):
    """The context an asyncio task receives (``await fn(ctx)``)."""

    __slots__ = ("stop_event",)

    def __init__(self, record: Record, stop_event: asyncio.Event) -> None:
        super().__init__(record, stop_event.is_set)
        self.stop_event = stop_event
        """Set when the supervisor stops."""

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; return False at once when the supervisor is stopping.

        ``while await ctx.sleep(5.0): await poll()`` runs until the supervisor stops.
        Time spent here never counts as a stall, and waking up is a heartbeat.
        """
        with self._resting():
            return not await _stopped_within(self.stop_event, seconds)


class AsyncSupervisor(SupervisorBase):
    """Run coroutine functions as asyncio tasks; restart them when they crash.

    ::

        async with outlast.supervise.AsyncSupervisor() as sup:
            sup.start("listener", listen_forever, heartbeat=30)
            await sup.wait()          # until stop() or a signal

    Options as for `Supervisor`. `start()` must be called from inside the
    running event loop; all tasks live on that loop.
    """

    _kind = "task"

    _stop: asyncio.Event

    def _init_shell(self) -> None:
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(
        self,
        name: str,
        fn: Callable[[AsyncTaskContext], Awaitable[object]],
        *,
        restart: RestartPolicy = "always",
        backoff: Backoff | float | datetime.timedelta | _Unset | None = UNSET,
        max_restarts: int | _Unset | None = UNSET,
        within: float | datetime.timedelta | None = None,
        heartbeat: float | datetime.timedelta | None = None,
    ) -> None:
        """Start ``await fn(ctx)`` as an asyncio task named `name` (see `Supervisor.start`)."""
        if not callable(fn):
            raise ConfigurationError("fn must be a coroutine function")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("an AsyncSupervisor serves a single event loop")
        if self._stop.is_set():
            raise RuntimeError(f"supervisor {self.name!r} is stopping; cannot start {name!r}")
        self._loop = loop
        record = self._new_record(
            name,
            restart=restart,
            backoff=backoff,
            max_restarts=max_restarts,
            within=within,
            heartbeat=heartbeat,
        )
        ctx = AsyncTaskContext(record, self._stop)
        self._tasks[name] = loop.create_task(self._run(record, fn, ctx), name=name)
        if record.heartbeat is not None and self._watchdog is None:
            self._watchdog = loop.create_task(self._watch(), name=f"{self.name}-watchdog")

    async def _run(
        self,
        record: Record,
        fn: Callable[[AsyncTaskContext], Awaitable[object]],
        ctx: AsyncTaskContext,
    ) -> None:
        _current.set(ctx)  # the Task runs in its own copy of the context
        while True:
            with self._lock:
                record.begin_run()
            error: BaseException | None = None
            try:
                await fn(ctx)
            except asyncio.CancelledError as exc:
                if cancel_requested():
                    with self._lock:
                        record.state = "stopped"
                    raise
                # Nobody cancelled this Task: `fn` awaited something that someone
                # else cancelled (a shared future, a task of its own) and let the
                # CancelledError out. That is a crash, not a request to stop.
                error = exc
            except Exception as exc:
                error = exc
            except BaseException as exc:  # SystemExit, KeyboardInterrupt: propagate
                self._after_exit(record, exc, stopping=True)
                raise
            delay = self._after_exit(record, error, stopping=self._stop.is_set())
            del error
            if delay is None:
                return
            if await _stopped_within(self._stop, delay):
                with self._lock:
                    record.state = "stopped"
                return

    async def _watch(self) -> None:
        interval = 0.05
        while not await _stopped_within(self._stop, interval):
            interval = self._check_stalls()

    # -- stopping ---------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask every task to stop without waiting (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stop.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stop.set()
        else:
            loop.call_soon_threadsafe(self._stop.set)

    async def wait(self) -> None:
        """Wait until a stop is requested (by `stop()`, a signal or escalation)."""
        await self._stop.wait()

    async def stop(self, timeout: float | datetime.timedelta | None = None) -> list[str]:
        """Stop every task; cancel those still running after `timeout` seconds.

        Returns the names of the tasks that had to be cancelled (empty when
        every task finished by itself); they are logged as ``[TASK_STUCK]``.
        """
        limit = self.stop_timeout if timeout is None else seconds(timeout, "timeout")
        self._stop.set()
        me = asyncio.current_task()
        tasks = dict(self._tasks)
        if self._watchdog is not None:
            tasks[self._watchdog.get_name()] = self._watchdog
        pending = {t: n for n, t in tasks.items() if t is not me and not t.done()}
        stuck: list[str] = []
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=limit)
            stuck = sorted(pending[t] for t in not_done)
            for task in not_done:
                task.cancel()
            if not_done:
                await asyncio.wait(not_done, timeout=_CANCEL_GRACE)
        self._log_stuck(
            stuck, "[TASK_STUCK] name=%s did not finish within %gs after stop: cancelled", limit
        )
        for name, task in tasks.items():
            if task.done():
                self._tasks.pop(name, None)
                if not task.cancelled():
                    task.exception()  # retrieved: never "exception was never retrieved"
        return stuck

    async def __aenter__(self) -> AsyncSupervisor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- signals ----------------------------------------------------------------------

    def install_signal_handlers(
        self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> Callable[[], None]:
        """Stop gracefully on SIGTERM/SIGINT, then chain to the previous handler.

        Uses ``loop.add_signal_handler`` (call it from inside the running loop,
        in the main thread). After `stop()` finishes, a previous Python handler
        is called, a default action is re-raised (the process ends as it would
        have), an ignored signal stays ignored. Returns a function that
        restores the previous handlers.
        """
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in signals}
        pending: set[asyncio.Task[None]] = set()

        async def stop_then_chain(signum: int) -> None:
            await self.stop()
            old = previous.get(signum)
            if callable(old):
                old(signum, None)
            elif old == signal.SIG_DFL or old is None:
                loop.remove_signal_handler(signum)
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        def handle(signum: int) -> None:
            self._log_signal(signum)
            self._stop.set()
            task = loop.create_task(stop_then_chain(signum), name=f"{self.name}-signal-stop")
            pending.add(task)
            task.add_done_callback(pending.discard)

        for sig in previous:
            loop.add_signal_handler(sig, handle, sig)

        def restore() -> None:
            for sig, old in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_DFL if old is None else old)

        return restore
