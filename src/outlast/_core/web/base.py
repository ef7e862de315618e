"""`WebBase`: what every framework integration does, with no framework in sight.

`outlast.flask.Outlast`, `outlast.starlette.Outlast` and the Django `Runtime`
derive from it. It holds the settings, the Guard and the health probe, and
turns an exception or a health request into an answer (status, body,
headers, content type); the framework modules only find the route of a
request and wrap an answer in their own response class.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from outlast._core.guard.events import Event, emit, process_listeners
from outlast._core.guard.first_use import CURRENT as FIRST_USE
from outlast._core.timing.budget import RequestBudget

from .calls import call_within_budget, transaction_within_budget
from .health import (
    HealthAnswer,
    SyncProbe,
    engine_ping,
    health_answer,
    health_db,
    health_live,
    health_ready,
)
from .mapping import Mapped, fault_labels, log_fault, map_exception, record_fault
from .options import WebConfig, WebOptions

if TYPE_CHECKING:
    from outlast._core.guard.guard import Guard

__all__ = ["LIVE_WEB", "FaultAnswered", "WebBase"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultAnswered(Event):
    """A web integration answered a database fault (a 503, or a 500 for a bug).

    Delivered to process listeners only (``outlast.otel`` puts it on the
    request's span); `op` is the route pattern.
    """

    status: int
    error: str
    reason: str


LIVE_WEB: weakref.WeakSet[WebBase] = weakref.WeakSet()
"""Every web integration object alive in this process (for the metrics exporters)."""


class WebBase:
    """Settings, Guard and health probe shared by the Flask, Starlette and Django shells.

    Takes the `WebOptions` (the same for every framework; see
    `outlast._core.web.options`). Without a `guard`, one is made on first
    use (``Guard.for_web``), named by `_default_guard_name`.
    """

    def __init__(self, **options: Unpack[WebOptions]) -> None:
        self.config = WebConfig.from_options(options)
        self.budget = RequestBudget(self.config.budget, margin=self.config.answer_margin)
        self._guard: Guard | None = self.config.guard
        self.supervisor: Any = self.config.supervisor
        self.session: Any = self.config.session
        self.engine: Any = self.config.engine
        self.ping: Callable[[], object] | None = self.config.ping
        self.ready: Callable[[], bool] | None = self.config.ready
        self._probe: SyncProbe | None = None
        # Answers given for database faults: (status, error, reason) -> count.
        # The labels come from a bounded vocabulary (see `fault_labels`).
        self.answers: dict[tuple[int, str, str], int] = {}
        self._answers_lock = threading.Lock()
        LIVE_WEB.add(self)

    @property
    def guard(self) -> Guard:
        """The Guard in use (made on first use when none was given)."""
        if self._guard is None:
            from outlast._core.guard.guard import Guard

            self._guard = Guard.for_web(self._default_guard_name())
        return self._guard

    @guard.setter
    def guard(self, guard: Guard) -> None:
        self._guard = guard

    def _default_guard_name(self) -> str:
        return "default"

    def _default_engine(self) -> Any:
        """The engine /health/db pings when neither `ping` nor `engine` was given."""
        return None

    # -- what views use -------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``guard.call(fn, ...)`` with the rest of the request budget as its timeout.

        The timeout is what is left of the budget minus `attempt_reserve`, so
        no retry starts that could not finish in time; an explicit
        ``timeout=`` wins. Outside a request: the Guard's own retry timeout.
        """
        return call_within_budget(
            self.guard, fn, *args, reserve=self.config.attempt_reserve, **kwargs
        )

    def transaction(self, source: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``guard.transaction(source, fn, ...)`` with the rest of the request budget.

        Same timeout as `call`: retries and the ``pg_xact_status`` resolution
        of a lost COMMIT stay inside the budget. While a COMMIT is in flight or
        being resolved the request is marked, so whatever then fails it
        answers ``OUTCOME_UNKNOWN``, never "not applied".
        """
        return transaction_within_budget(
            self.guard, source, fn, *args, reserve=self.config.attempt_reserve, **kwargs
        )

    # -- faults ---------------------------------------------------------------------

    def map_fault(self, exc: BaseException) -> Mapped | None:
        """The answer to `exc` (None: not a database fault; let the framework handle it).

        Uses the Guard only if there already is one: a fault in a view that
        never touched the Guard must not make one up and count against it.
        """
        return map_exception(exc, self._guard)

    def report_fault(self, exc: BaseException, mapped: Mapped, route: str) -> None:
        """Report a mapped fault to the Guard (unless `record_faults` is off) and log it once.

        The request that raised it reached the database, whatever way it
        took: while the breaker is half-open its fault is the probe's answer.
        """
        first_use = FIRST_USE.get()
        if first_use is not None and first_use.serves(self._guard) and mapped.fault is not None:
            first_use.saw_fault(exc)
        if self.config.record_faults:
            record_fault(self._guard, exc, route, mapped.fault)
        log_fault(exc, mapped, route)
        self.count_answer(exc, mapped, route)

    @property
    def guard_name(self) -> str:
        """The Guard's name, or "" while none was given or made yet (never makes one)."""
        return self._guard.name if self._guard is not None else ""

    def answer_counts(self) -> dict[tuple[int, str, str], int]:
        """A copy of `answers`: ``(status, error, reason) -> count`` (what ``/metrics`` reads)."""
        with self._answers_lock:
            return dict(self.answers)

    def count_answer(self, exc: BaseException, mapped: Mapped, route: str = "") -> None:
        """Count one answer given for a database fault (what ``/metrics`` reports)."""
        error = (
            "INTERNAL_ERROR"
            if mapped.status >= 500 and mapped.status != 503
            else ("OUTCOME_UNKNOWN" if b"OUTCOME_UNKNOWN" in mapped.body else "SERVICE_UNAVAILABLE")
        )
        key = (mapped.status, error, fault_labels(exc, mapped)[1])
        with self._answers_lock:
            self.answers[key] = self.answers.get(key, 0) + 1
        listeners = process_listeners()
        if listeners:
            answered = FaultAnswered(
                guard=self.guard_name,
                op=route,
                at=time.time(),
                status=key[0],
                error=error,
                reason=key[2],
            )
            emit(listeners, answered)

    # -- health ---------------------------------------------------------------------

    def live_answer(self) -> HealthAnswer:
        """``/health/live``: the process answers; never touches the database."""
        return health_answer(*health_live())

    def ready_answer(self) -> HealthAnswer:
        """``/health/ready``: start-up readiness from what the Guard knows (no query)."""
        return health_answer(
            *health_ready(
                self.guard,
                fail_on_db=self.config.ready_fail_on_db,
                supervisor=self.supervisor,
                ready=self.ready,
            )
        )

    def db_answer(self) -> HealthAnswer:
        """``/health/db`` for a blocking ping (or the Guard's state when there is none)."""
        return health_answer(*health_db(self.guard, self.sync_probe()))

    def sync_probe(self) -> SyncProbe | None:
        """The ``SELECT 1`` probe: `ping`, else through `engine` (built once; None if neither)."""
        if self._probe is None:
            ping = self.ping
            if ping is None:
                engine = self.engine if self.engine is not None else self._default_engine()
                if engine is not None:
                    ping = engine_ping(engine)
            if ping is None:
                return None
            self._probe = SyncProbe(self.guard, ping, self.config.health_timeout)
        return self._probe
