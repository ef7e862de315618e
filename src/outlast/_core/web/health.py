"""Health documents for the web integrations (standard library only).

The IETF health-check draft's ``application/health+json``: ``status`` is
``pass``, ``warn`` or ``fail``; ``checks`` maps ``component:measurement`` to a
list of observations. Nothing here ever prints a DSN or a fault's message
(which can name hosts): only kinds and reason words.

- `health_live`: the process answers; never touches the database.
- `health_ready`: start-up readiness from what the Guard already knows (no
  query); the database being down is ``warn`` (200) unless asked to fail.
- `health_db` / `health_db_async`: ``SELECT 1`` through the Guard with a short
  timeout; 503 while the database is down, with latency, ``down_since`` and
  outage counts. A ``SELECT 1`` that gets no answer within the timeout is a
  failure the Guard counts (``server_unresponsive``): the cheapest question
  there is went unanswered. Without a ping, the answer is the Guard's state,
  and only an answer from the server is evidence: unanswered client-side
  timeouts since the last answer make it 503 too.
- `health_answer`: one of those documents as the status, body and headers
  every framework sends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from outlast._core.faults.errors import DatabaseUnavailable, RequestBudgetExceeded
from outlast._core.faults.fault import Fault, FaultKind

from .calls import guard_retry_after
from .mapping import retry_after_header

if TYPE_CHECKING:
    from outlast._core.guard.guard import Guard
    from outlast._core.guard.state import DatabaseState

__all__ = [
    "HEALTH_CONTENT_TYPE",
    "HealthAnswer",
    "SyncProbe",
    "async_engine_ping",
    "engine_ping",
    "health_answer",
    "health_db",
    "health_db_async",
    "health_live",
    "health_paths",
    "health_ready",
]

logger = logging.getLogger("outlast")

HEALTH_CONTENT_TYPE: Final = "application/health+json"

HealthStatus = Literal["pass", "warn", "fail"]
_STARTED: Final = time.time()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _now_iso() -> str:
    return _iso(time.time()) or ""


def _worst(*statuses: str) -> HealthStatus:
    if "fail" in statuses:
        return "fail"
    if "warn" in statuses:
        return "warn"
    return "pass"


def _state_check(guard: Guard, status: str) -> dict[str, Any]:
    state: DatabaseState = guard.state
    fault = state.last_fault
    check: dict[str, Any] = {
        "componentId": guard.name,
        "componentType": "datastore",
        "status": status,
        "time": _now_iso(),
        "up": state.up,
        "breaker": state.breaker,
        "down_since": _iso(state.down_since),
        "outages": state.outages,
        "downtime_s": round(state.downtime, 3),
    }
    if fault is not None and state.down:
        # A reason word only: fault messages can name hosts.
        check["output"] = f"{fault.kind.name.lower()}: {fault.reason}"
    elif state.unanswered_since is not None:
        check["unanswered_since"] = _iso(state.unanswered_since)
        check["output"] = "timeout: no answer from the database since a client-side timeout"
    return check


def health_live() -> tuple[int, dict[str, Any]]:
    """Liveness: the process answers. Never touches the database."""
    return 200, {
        "status": "pass",
        "description": "liveness (never touches the database)",
        "checks": {
            "uptime": [
                {
                    "componentType": "system",
                    "observedValue": round(time.time() - _STARTED, 3),
                    "observedUnit": "s",
                    "status": "pass",
                    "time": _now_iso(),
                }
            ]
        },
    }


def _supervisor_checks(supervisor: Any) -> tuple[HealthStatus, dict[str, Any]]:
    try:
        doc = supervisor.health()
    except Exception:
        logger.debug("supervisor.health() failed", exc_info=True)
        return "fail", {"supervisor:tasks": [{"status": "fail", "output": "health() failed"}]}
    raw = doc.get("status", "pass")
    status: HealthStatus = raw if raw in ("pass", "warn", "fail") else "warn"
    tasks = doc.get("tasks", {}) or {}
    entries = []
    for name, task in tasks.items():
        task_state = task.get("state") if isinstance(task, Mapping) else None
        entries.append(
            {
                "componentId": name,
                "componentType": "component",
                "status": (
                    "fail"
                    if task_state == "failed"
                    else "warn"
                    if task_state in ("stalled", "restarting")
                    else "pass"
                ),
                "observedValue": task_state,
                "time": _now_iso(),
            }
        )
    return status, {"supervisor:tasks": entries}


def health_ready(
    guard: Guard | None,
    *,
    fail_on_db: bool = False,
    supervisor: Any = None,
    ready: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Readiness, from what the Guard already knows (no query).

    By default the database being down only makes this ``warn`` (still 200):
    if every pod turned unready, clients would get refused connections
    instead of 503s. ``fail_on_db=True`` turns that into ``fail``/503.
    When `ready` returns false and has a ``describe()`` method, its text is
    the ``startup:ready`` check's ``output``.
    """
    checks: dict[str, Any] = {}
    statuses: list[str] = []
    started = True
    if ready is not None:
        try:
            started = bool(ready())
        except Exception:
            started = False
    startup: dict[str, Any] = {
        "componentType": "system",
        "status": "pass" if started else "fail",
        "time": _now_iso(),
    }
    if not started:
        # A `ready` object may say why (outlast.migrate: "migrations pending: ...").
        describe = getattr(ready, "describe", None)
        if callable(describe):
            try:
                startup["output"] = str(describe())
            except Exception:
                logger.debug("ready.describe() failed", exc_info=True)
    checks["startup:ready"] = [startup]
    statuses.append("pass" if started else "fail")
    if guard is not None:
        down = guard.state.down
        db_status = ("fail" if fail_on_db else "warn") if down else "pass"
        checks["postgres:connection"] = [_state_check(guard, db_status)]
        statuses.append(db_status)
    if supervisor is not None:
        sup_status, sup_checks = _supervisor_checks(supervisor)
        checks.update(sup_checks)
        statuses.append(sup_status)
    status = _worst(*statuses)
    return (503 if status == "fail" else 200), {
        "status": status,
        "description": "readiness",
        "checks": checks,
    }


def health_db_result(
    guard: Guard, ok: bool, latency: float | None, error: BaseException | None
) -> tuple[int, dict[str, Any], str | None]:
    """Build the /health/db document from a ping outcome."""
    status: HealthStatus = "pass" if ok else "fail"
    check = _state_check(guard, status)
    if latency is not None:
        check["observedValue"] = round(latency * 1000.0, 2)
        check["observedUnit"] = "ms"
    if not ok:
        fault = getattr(error, "fault", None)
        if isinstance(error, _Unanswered):
            pass  # the state check already says why
        elif isinstance(error, _NoAnswer):
            check["output"] = "unavailable: no answer to the health check"
        elif isinstance(error, RequestBudgetExceeded | TimeoutError):
            check["output"] = "timeout: health check timed out"
        elif isinstance(error, DatabaseUnavailable) and fault is None:
            check["output"] = "unavailable: breaker open"
        elif "output" not in check:
            f = fault if isinstance(fault, Fault) else guard.classify(error) if error else None
            check["output"] = f"{f.kind.name.lower()}: {f.reason}" if f else "unavailable"
    retry_after = None if ok else retry_after_header(_retry_after_of(error, guard))
    return (
        (200 if ok else 503),
        {
            "status": status,
            "description": "database",
            "checks": {"postgres:responseTime": [check]},
        },
        retry_after,
    )


def _retry_after_of(error: BaseException | None, guard: Guard) -> float | None:
    if isinstance(error, DatabaseUnavailable) and error.retry_after:
        return error.retry_after
    return guard_retry_after(guard)


class _NoAnswer(TimeoutError):
    """The health check's ``SELECT 1`` got no answer within its timeout."""


def _no_answer(guard: Guard, timeout: float) -> _NoAnswer:
    """Count a health ping that got no answer as a failure; return the error to report."""
    error = _NoAnswer(f"no answer to the health check within {timeout:g}s")
    fault = Fault(
        kind=FaultKind.UNAVAILABLE,
        reason="server_unresponsive",
        sqlstate=None,
        phase="unknown",
        transient=True,
        message=str(error),
    )
    try:
        guard.record_failure(error, op="health_db", fault=fault)
    except Exception:  # pragma: no cover - defensive: a health answer must go out
        logger.debug("record_failure failed", exc_info=True)
    return error


class SyncProbe:
    """Runs ``SELECT 1`` through the Guard in a helper thread, one at a time.

    A blocking driver cannot always be interrupted (a blackholed socket), so the
    health request waits at most `timeout` and answers 503; a probe still stuck
    from an earlier request is not piled on: the next one answers at once.
    """

    def __init__(self, guard: Guard, ping: Callable[[], object], timeout: float) -> None:
        self.guard = guard
        self.ping = ping
        self.timeout = timeout
        self._lock = threading.Lock()
        self._busy: threading.Event | None = None

    def run(self) -> tuple[int, dict[str, Any], str | None]:
        """Ping once (or answer 503 at once while an earlier ping is stuck); see `health_db`."""
        with self._lock:
            if self._busy is not None and not self._busy.is_set():
                return health_db_result(self.guard, False, None, TimeoutError())
            done = threading.Event()
            self._busy = done
        box: dict[str, Any] = {}

        def probe() -> None:
            start = time.monotonic()
            try:
                self.guard.call(self.ping, idempotent=True, op="health_db", timeout=self.timeout)
                box["latency"] = time.monotonic() - start
            except BaseException as exc:  # reported to the health request
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=probe, name="outlast-health-db", daemon=True).start()
        if not done.wait(self.timeout):
            return health_db_result(self.guard, False, None, _no_answer(self.guard, self.timeout))
        if "error" in box:
            return health_db_result(self.guard, False, None, box["error"])
        return health_db_result(self.guard, True, box["latency"], None)


async def health_db_async(
    guard: Guard, ping: Callable[[], Any], timeout: float
) -> tuple[int, dict[str, Any], str | None]:
    """``SELECT 1`` through ``guard.acall`` with a timeout (async apps)."""
    import asyncio

    start = time.monotonic()
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            await guard.acall(ping, idempotent=True, op="health_db", timeout=timeout)
    except Exception as exc:
        # Our own limit cancelled the ping: no answer at all.
        error = _no_answer(guard, timeout) if limit.expired() else exc
        return health_db_result(guard, False, None, error)
    return health_db_result(guard, True, time.monotonic() - start, None)


def health_db(guard: Guard, probe: SyncProbe | None) -> tuple[int, dict[str, Any], str | None]:
    """The /health/db answer for sync apps (state only if there is no probe)."""
    if probe is None:
        # No way to ask: only an answer is evidence, so a client-side timeout
        # since the last one is a 503 as much as an outage is.
        state = guard.state
        if state.answering:
            return health_db_result(guard, True, None, None)
        return health_db_result(
            guard, False, None, DatabaseUnavailable() if state.down else _Unanswered()
        )
    return probe.run()


class _Unanswered(TimeoutError):
    """No ping configured, and the last thing the Guard heard was a client-side timeout."""


def health_paths(prefix: str) -> dict[str, str]:
    """{"live": "/health/live", ...} under `prefix`."""
    prefix = "/" + prefix.strip("/")
    return {name: f"{prefix}/{name}" for name in ("live", "ready", "db")}


def engine_ping(engine: Any) -> Callable[[], object]:
    """A ``SELECT 1`` through a SQLAlchemy Engine (duck-typed: no import)."""

    def ping() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    return ping


def async_engine_ping(engine: Any) -> Callable[[], Any]:
    """A ``SELECT 1`` through a SQLAlchemy AsyncEngine (duck-typed)."""

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    return ping


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    """A health document ready to send: status, JSON body and headers."""

    status: int
    body: str
    headers: tuple[tuple[str, str], ...]
    content_type: ClassVar[str] = HEALTH_CONTENT_TYPE


def health_answer(status: int, doc: dict[str, Any], retry_after: str | None = None) -> HealthAnswer:
    """Wrap a health document; never cached (a stale "pass" would hide an outage)."""
    headers: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"),)
    if retry_after is not None:
        headers += (("Retry-After", retry_after),)
    return HealthAnswer(status, json.dumps(doc), headers)
