"""The I/O-free half of supervision, shared by the thread and asyncio supervisors.

`Supervisor` (threads, `_supervisor`) and `AsyncSupervisor` (asyncio, `_asupervisor`)
are thin shells around `_SupervisorBase`: it owns the task records, the restart
decision (policy + restart intensity + backoff), crash/stall logging, `status()` and
`health()`. Only waiting, starting and joining differ between the two shells.

Restart rule (Erlang/OTP): every restart — after a crash, or after a normal return
under ``restart="always"`` — counts towards the intensity limit; a task restarted
more than `max_restarts` times within `within` seconds is marked ``failed``. The
backoff before a restart grows with the number of restarts inside that window, so
it resets once a task has run `within` seconds without being restarted.
"""

from __future__ import annotations

import datetime
import threading
import time
import weakref
from typing import Any, Literal, Protocol

from outlast._core.faults.errors import ConfigurationError
from outlast._core.guard.backoff import Backoff

from .record import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_RESTARTS,
    DEFAULT_STOP_TIMEOUT,
    DEFAULT_WITHIN,
    RESTART_POLICIES,
    OnFailure,
    Record,
    TaskStatus,
    _Unset,
    as_backoff,
    describe_error,
    logger,
    restart_delay,
    seconds,
)

__all__ = ["LIVE_SUPERVISORS", "SupervisorBase"]


class _StopFlag(Protocol):
    """A `threading.Event` or an `asyncio.Event`: what the shells stop with."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


LIVE_SUPERVISORS: weakref.WeakSet[SupervisorBase] = weakref.WeakSet()
"""Every supervisor alive in this process (the metrics exporters report on them)."""


class SupervisorBase:
    """Records, restart decisions, logging and reporting; no threads, no event loop.

    The shells set up their own state (the stop event, their threads or tasks)
    in `_init_shell`, called at the end of ``__init__``.
    """

    _kind: Literal["thread", "task"] = "thread"
    _stop: _StopFlag

    def __init__(
        self,
        name: str = "supervisor",
        *,
        backoff: Backoff | float | datetime.timedelta | None = DEFAULT_BACKOFF,
        max_restarts: int | None = DEFAULT_MAX_RESTARTS,
        within: float | datetime.timedelta = DEFAULT_WITHIN,
        stop_timeout: float | datetime.timedelta = DEFAULT_STOP_TIMEOUT,
        on_failure: OnFailure = None,
    ) -> None:
        self.name = name
        self._backoff = as_backoff(backoff)
        self._max_restarts = self._check_max(max_restarts)
        self._within = seconds(within, "within", allow_zero=False)
        self.stop_timeout = seconds(stop_timeout, "stop_timeout")
        if on_failure is not None and on_failure != "escalate" and not callable(on_failure):
            raise ConfigurationError('on_failure must be None, "escalate" or a callable')
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}
        self._escalated = False
        self._init_shell()
        LIVE_SUPERVISORS.add(self)

    def _init_shell(self) -> None:  # pragma: no cover - overridden by both shells
        raise NotImplementedError

    @staticmethod
    def _check_max(value: int | None) -> int | None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigurationError("max_restarts must be an int >= 0 or None")
        if value is not None and value < 0:
            raise ConfigurationError("max_restarts must be >= 0 or None")
        return value

    def _new_record(
        self,
        name: str,
        *,
        restart: str,
        backoff: Backoff | float | datetime.timedelta | _Unset | None,
        max_restarts: int | _Unset | None,
        within: float | datetime.timedelta | None,
        heartbeat: float | datetime.timedelta | None,
    ) -> Record:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("a task needs a non-empty name")
        if restart not in RESTART_POLICIES:
            raise ConfigurationError(f"restart must be one of {RESTART_POLICIES}, got {restart!r}")
        record = Record(
            name,
            self._kind,
            restart=restart,  # type: ignore[arg-type]  # checked above
            backoff=self._backoff if isinstance(backoff, _Unset) else as_backoff(backoff),
            max_restarts=(
                self._max_restarts
                if isinstance(max_restarts, _Unset)
                else self._check_max(max_restarts)
            ),
            within=self._within if within is None else seconds(within, "within", allow_zero=False),
            heartbeat=None
            if heartbeat is None
            else seconds(heartbeat, "heartbeat", allow_zero=False),
        )
        with self._lock:
            old = self._records.get(name)
            if old is not None and old.live:
                raise ConfigurationError(f"a task named {name!r} is already running")
            self._records[name] = record
        return record

    # -- decisions --------------------------------------------------------------------

    def _after_exit(
        self, record: Record, exc: BaseException | None, stopping: bool
    ) -> float | None:
        """Decide what happens after a run ended; return the restart delay or None."""
        now = time.monotonic()
        summary, trace = describe_error(exc) if exc is not None else ("", "")
        delay: float | None = None
        over_limit = False
        with self._lock:
            if exc is not None:
                record.last_error = summary
                record.last_error_at = time.time()
            if stopping:
                record.state = "stopped"
            elif record.restart == "never" or (record.restart == "on_failure" and exc is None):
                record.state = "finished" if exc is None else "failed"
            else:
                window = record.restart_times
                while window and window[0] <= now - record.within:
                    window.popleft()
                if record.max_restarts is not None and len(window) >= record.max_restarts:
                    record.state = "failed"
                    over_limit = True
                else:
                    window.append(now)
                    record.restarts += 1
                    record.state = "restarting"
                    delay = restart_delay(record.backoff, len(window))
            restarts = record.restarts
            failed = record.state == "failed"
        if exc is not None:
            if delay is not None:
                action = f"restart_in={delay:.2f}s"
            else:
                action = "action=stop" if stopping else "action=give_up"
            logger.error(
                "[THREAD_CRASH] name=%s kind=%s restarts=%d %s err=%s\n%s",
                record.name,
                record.kind,
                restarts,
                action,
                summary,
                trace.rstrip("\n"),
                extra={"outlast_task": record.name, "outlast_event": "task_crashed"},
            )
        if over_limit:
            logger.error(
                "[TASK_FAILED] name=%s restarts=%d limit=%s/%gs last_error=%s",
                record.name,
                restarts,
                record.max_restarts,
                record.within,
                record.last_error,
                extra={"outlast_task": record.name, "outlast_event": "task_failed"},
            )
        if failed:
            self._escalate(record)
        return delay

    def _escalate(self, record: Record) -> None:
        handler = self._on_failure
        if handler is None:
            return
        if handler == "escalate":
            logger.error(
                "[SUPERVISOR_ESCALATE] supervisor=%s task=%s failed: stopping every task",
                self.name,
                record.name,
                extra={"outlast_task": record.name, "outlast_event": "supervisor_escalated"},
            )
            self._escalated = True
            self._request_stop()
            return
        with self._lock:
            status = record.snapshot(time.monotonic())
        try:
            handler(status)
        except Exception:
            logger.exception("[SUPERVISOR_ESCALATE] on_failure callback of %s raised", self.name)

    @property
    def stopping(self) -> bool:
        """True once a stop was requested (by `stop()`, a signal or escalation)."""
        return self._stop.is_set()

    def _request_stop(self) -> None:
        self._stop.set()

    def _log_signal(self, signum: int) -> None:
        import signal

        logger.info(
            "[SUPERVISOR_STOP] supervisor=%s signal=%s: stopping tasks",
            self.name,
            signal.Signals(signum).name,
        )

    @staticmethod
    def _log_stuck(names: list[str], message: str, limit: float) -> None:
        """Log each task that did not finish within `limit` seconds of a stop.

        `message` is the shell's own format (``name=%s ... %gs``), so each keeps its tag.
        """
        for name in names:
            logger.warning(
                message, name, limit, extra={"outlast_task": name, "outlast_event": "task_stuck"}
            )

    def _check_stalls(self) -> float:
        """Log stalls once each (and their end); return the next check interval."""
        now = time.monotonic()
        interval = 1.0
        events: list[tuple[str, Record, float]] = []
        with self._lock:
            for record in self._records.values():
                if record.heartbeat is None:
                    continue
                interval = min(interval, record.heartbeat / 4)
                silent = record.silent_for(now)
                if silent is not None and not record.stall_logged:
                    record.stall_logged = True
                    events.append(("stalled", record, silent))
                elif silent is None and record.stall_logged and record.state == "running":
                    record.stall_logged = False
                    events.append(("alive", record, now - record.last_beat))
        for what, record, silent in events:
            if what == "stalled":
                logger.warning(
                    "[TASK_STALLED] name=%s silent=%.1fs limit=%gs",
                    record.name,
                    silent,
                    record.heartbeat,
                    extra={"outlast_task": record.name, "outlast_event": "task_stalled"},
                )
            else:
                logger.info(
                    "[TASK_ALIVE] name=%s heartbeat resumed",
                    record.name,
                    extra={"outlast_task": record.name, "outlast_event": "task_alive"},
                )
        return max(0.02, interval)

    # -- reporting --------------------------------------------------------------------

    @property
    def escalated(self) -> bool:
        """True once a failed task made the supervisor stop everything."""
        return self._escalated

    def status(self) -> dict[str, TaskStatus]:
        """A snapshot of every task, by name."""
        now = time.monotonic()
        with self._lock:
            return {name: rec.snapshot(now) for name, rec in self._records.items()}

    def status_dict(self) -> dict[str, dict[str, Any]]:
        """`status()` as JSON-serialisable dicts."""
        return {name: st.as_dict() for name, st in self.status().items()}

    def health(self) -> dict[str, Any]:
        """IETF-health-check style summary: ``{"status": "pass"|"warn"|"fail", "tasks": …}``.

        ``fail`` when a task failed; ``warn`` when one is stalled or restarting.
        """
        tasks = self.status()
        states = {st.state for st in tasks.values()}
        status = (
            "fail"
            if "failed" in states
            else "warn"
            if states & {"stalled", "restarting"}
            else "pass"
        )
        return {"status": status, "tasks": {n: st.as_dict() for n, st in tasks.items()}}
