"""`Supervisor`: threads that survive crashes, restart with backoff and stop cleanly.

Each task gets one non-daemon thread, named after the task, for its whole life:
a restart calls the function again in the same thread after the backoff, so a
thousand restarts never leave a thousand threads behind. `stop()` sets one stop
event (every `ctx.sleep()` and every backoff wait wakes at once), then joins each
thread against a single deadline and reports those that did not finish.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType

from outlast._core.faults.errors import ConfigurationError
from outlast._core.guard.backoff import Backoff
from outlast._core.timing.durations import seconds

from .base import SupervisorBase
from .record import UNSET, Record, RestartPolicy, TaskContext, _current, _Unset

__all__ = ["Supervisor", "ThreadTaskContext"]

logger = logging.getLogger("outlast")

_SignalHandler = Callable[[int, FrameType | None], object] | int | None


class ThreadTaskContext(TaskContext):
    """The context a thread task receives (``fn(ctx)``)."""

    __slots__ = ("stop_event",)

    def __init__(self, record: Record, stop_event: threading.Event) -> None:
        super().__init__(record, stop_event.is_set)
        self.stop_event = stop_event
        """Set when the supervisor stops; hand it to code that accepts an Event."""

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; return False at once when the supervisor is stopping.

        ``while ctx.sleep(5.0): poll()`` runs until the supervisor stops. Time
        spent here never counts as a stall, and waking up is a heartbeat.
        """
        with self._resting():
            return not self.stop_event.wait(max(0.0, seconds))


class Supervisor(SupervisorBase):
    """Run functions in threads; restart them when they crash (Erlang/OTP style).

    ::

        sup = outlast.supervise.Supervisor()
        sup.start("mailer", send_mail_forever, heartbeat=30)
        sup.install_signal_handlers()   # optional: SIGTERM/SIGINT stop gracefully
        ...
        unfinished = sup.stop(timeout=10)

    `start()` options default to the supervisor's: `backoff` (an `outlast.Backoff`,
    a constant number of seconds, or 0/None for no wait), `max_restarts` within
    `within` seconds (None: unlimited). `on_failure` is None, ``"escalate"`` (a
    failed task stops every task) or a callable receiving the failed
    `TaskStatus`.
    """

    _kind = "thread"

    _stop: threading.Event

    def _init_shell(self) -> None:
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._watchdog: threading.Thread | None = None
        _stop_at_exit(self)

    def start(
        self,
        name: str,
        fn: Callable[[ThreadTaskContext], object],
        *,
        restart: RestartPolicy = "always",
        backoff: Backoff | float | datetime.timedelta | _Unset | None = UNSET,
        max_restarts: int | _Unset | None = UNSET,
        within: float | datetime.timedelta | None = None,
        heartbeat: float | datetime.timedelta | None = None,
    ) -> None:
        """Start `fn(ctx)` in a new thread named `name`.

        `restart`: ``"always"`` (also when `fn` returns), ``"on_failure"`` (only
        when it raises) or ``"never"``. `heartbeat`: seconds the task may go
        without `ctx.beat()` before it is reported ``stalled``.
        """
        if not callable(fn):
            raise ConfigurationError("fn must be callable")
        if self._stop.is_set():
            raise RuntimeError(f"supervisor {self.name!r} is stopping; cannot start {name!r}")
        record = self._new_record(
            name,
            restart=restart,
            backoff=backoff,
            max_restarts=max_restarts,
            within=within,
            heartbeat=heartbeat,
        )
        ctx = ThreadTaskContext(record, self._stop)
        thread = threading.Thread(target=self._run, args=(record, fn, ctx), name=name, daemon=False)
        with self._lock:
            self._threads[name] = thread
        thread.start()
        if record.heartbeat is not None:
            self._ensure_watchdog()

    def _run(
        self, record: Record, fn: Callable[[ThreadTaskContext], object], ctx: ThreadTaskContext
    ) -> None:
        _current.set(ctx)  # this thread's own context: nothing to reset
        while True:
            with self._lock:
                record.begin_run()
            error: BaseException | None = None
            try:
                fn(ctx)
            except (Exception, asyncio.CancelledError) as exc:
                # A thread is never cancelled: a CancelledError out of `fn` (from an
                # event loop it ran, a future it waited on) is a crash like any other.
                error = exc
            except BaseException as exc:  # SystemExit & co. end this task, never restart it
                error = exc
                self._after_exit(record, exc, stopping=True)
                return
            delay = self._after_exit(record, error, stopping=self._stop.is_set())
            del error  # do not keep the traceback (and its frames) alive while waiting
            if delay is None:
                return
            if self._stop.wait(delay):
                with self._lock:
                    record.state = "stopped"
                return

    def _ensure_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is not None:
                return
            self._watchdog = threading.Thread(
                target=self._watch, name=f"{self.name}-watchdog", daemon=False
            )
        self._watchdog.start()

    def _watch(self) -> None:
        interval = 0.05
        while not self._stop.wait(interval):
            interval = self._check_stalls()

    # -- stopping ---------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask every task to stop without waiting for them (safe from any thread)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested; return whether it was (False on timeout).

        The main thread of a worker process can run ``sup.wait(); sup.stop()``.
        """
        return self._stop.wait(timeout)

    def stop(self, timeout: float | datetime.timedelta | None = None) -> list[str]:
        """Stop every task and join its thread; return the names still running.

        Waits at most `timeout` seconds in total (default: `stop_timeout`). A
        thread that did not finish is logged as ``[THREAD_STUCK]`` and
        returned; it cannot be killed, so its function should watch
        `ctx.stopping` or sleep through `ctx.sleep()`.
        """
        limit = self.stop_timeout if timeout is None else seconds(timeout, "timeout")
        deadline = time.monotonic() + limit
        self._stop.set()
        me = threading.current_thread()
        with self._lock:
            threads = list(self._threads.items())
            if self._watchdog is not None:
                threads.append((self._watchdog.name, self._watchdog))
        stuck: list[str] = []
        for name, thread in threads:
            if thread is me:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                stuck.append(name)
        self._log_stuck(stuck, "[THREAD_STUCK] name=%s did not finish within %gs after stop", limit)
        with self._lock:
            for name, thread in threads:
                if not thread.is_alive():
                    self._threads.pop(name, None)
        return stuck

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- signals ----------------------------------------------------------------------

    def install_signal_handlers(
        self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> Callable[[], None]:
        """Stop gracefully on SIGTERM/SIGINT, then do what the previous handler did.

        On a signal the handler runs `stop()` (bounded by `stop_timeout`), then
        chains: a Python handler is called, the default action is re-raised
        (SIGINT raises KeyboardInterrupt, SIGTERM terminates the process), an
        ignored signal stays ignored. Call from the main thread. Returns a
        function that restores the previous handlers.
        """
        previous: dict[int, _SignalHandler] = {}

        def handle(signum: int, frame: FrameType | None) -> None:
            self._log_signal(signum)
            self.stop()
            _chain(signum, frame, previous.get(signum))

        for sig in signals:
            previous[sig] = signal.signal(sig, handle)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_DFL if old is None else old)

        return restore


def _chain(signum: int, frame: FrameType | None, previous: _SignalHandler) -> None:
    """Hand a signal on to the handler that was installed before ours."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL or previous is None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN: the signal stays ignored


def _stop_at_exit(supervisor: Supervisor) -> None:
    """Request a stop before the interpreter joins non-daemon threads at exit.

    Without it a forgotten supervisor would keep the process alive forever.
    ``threading._register_atexit`` is what concurrent.futures uses for the
    same reason; it runs before the interpreter joins non-daemon threads.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - other interpreters
        return
    ref = weakref.ref(supervisor)

    def request() -> None:
        sup = ref()
        if sup is not None and not sup.stopping:
            sup.stop()

    try:
        register(request)
    except RuntimeError:  # pragma: no cover - the interpreter is already shutting down
        pass
