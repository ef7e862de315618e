"""OpenTelemetry for outlast: the same metrics as ``outlast.prometheus``, and outages in traces.

::

    import outlast.otel

    outlast.otel.instrument()       # the global MeterProvider and TracerProvider
    outlast.otel.instrument(meter_provider=provider)    # or yours

Only ``opentelemetry-api`` is needed; the SDK and its exporters are the
application's. Metrics are read from one snapshot of every live Guard, pool,
supervisor and web integration at collection time (observable instruments),
except ``db.client.operation.duration``, recorded per operation by the
hardened connections. Names follow the database semantic conventions where
they exist (``db.client.operation.duration``, ``db.client.connection.count``
with ``db.client.connection.state``, ``.max``, ``.pending_requests``,
``.timeouts``, ``db.system.name="postgresql"``, ``error.type``) and
``outlast.*`` otherwise.

Traces: retries, gave-ups, breaker transitions, calls the breaker refused,
lost COMMITs and their resolution, and the 503s the web integrations answered
are added as events (``outlast.retry``, ``outlast.breaker.opened``,
``outlast.call.rejected``, ``outlast.commit.resolved``,
``outlast.response.fault``, ...) to the span that is current when they happen,
so an outage shows up inside the request that met it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import TracerProvider

import outlast
from outlast._core.guard.events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    CallRejected,
    CommitResolved,
    DatabaseDown,
    DatabaseRecovered,
    Event,
    RetryGaveUp,
    RetryScheduled,
    add_process_listener,
)
from outlast._core.telemetry.snapshot import Snapshot, snapshot
from outlast._core.timing.operations import BUCKETS, OPERATIONS
from outlast._core.web.base import FaultAnswered

__all__ = ["Instrumentation", "instrument"]

_DB: Final = {"db.system.name": "postgresql"}
_SNAPSHOT_TTL: Final = 0.5  # one collection reads one snapshot, however many callbacks


class Instrumentation:
    """What `instrument` set up: its meter and the span-event listener."""

    def __init__(self, meter: Meter, tracer_provider: TracerProvider | None) -> None:
        self.meter = meter
        self._tracer_provider = tracer_provider
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot] | None = None
        self._register_instruments()
        histogram = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database operations on hardened connections",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )

        labels: dict[tuple[str, str, str], dict[str, str]] = {}  # built once per label set

        def record(guard: str, driver: str, seconds: float, error: str) -> None:
            attributes = labels.get((guard, driver, error))
            if attributes is None:
                attributes = {**_DB, "outlast.guard": guard, "outlast.driver": driver}
                if error:
                    attributes["error.type"] = error
                labels[(guard, driver, error)] = attributes
            histogram.record(seconds, attributes)

        self.record = record
        OPERATIONS.enable(record)
        add_process_listener(self.on_event)

    # -- metrics ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The snapshot of the current collection (re-read at most every half second)."""
        now = time.monotonic()
        with self._lock:
            if self._cached is None or now - self._cached[0] > _SNAPSHOT_TTL:
                self._cached = (now, snapshot())
            return self._cached[1]

    def _observe(
        self, read: Callable[[Snapshot], Iterable[tuple[float, dict[str, Any]]]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, attributes) for value, attributes in read(self.snapshot())]

        return callback

    def _register_instruments(self) -> None:
        m, o = self.meter, self._observe
        m.create_observable_gauge(
            "outlast.database.up",
            [o(lambda s: ((1.0 if g.up else 0.0, {"outlast.guard": g.name}) for g in s.guards))],
            unit="1",
            description="1 while the Guard sees its database up",
        )
        m.create_observable_gauge(
            "outlast.database.down_for",
            [o(lambda s: ((g.down_for, {"outlast.guard": g.name}) for g in s.guards))],
            unit="s",
            description="How long the current outage has lasted",
        )
        m.create_observable_counter(
            "outlast.database.outages",
            [o(lambda s: ((g.outages, {"outlast.guard": g.name}) for g in s.guards))],
            description="Outages seen",
        )
        m.create_observable_gauge(
            "outlast.breaker.state",
            [o(_breaker_states)],
            unit="1",
            description="1 for the breaker's current state",
        )
        m.create_observable_counter(
            "outlast.breaker.transitions", [o(_transitions)], description="Breaker transitions"
        )
        m.create_observable_counter(
            "outlast.calls",
            [o(lambda s: ((g.counters.calls, {"outlast.guard": g.name}) for g in s.guards))],
            description="Calls through the Guard",
        )
        m.create_observable_counter(
            "outlast.calls.rejected",
            [o(lambda s: ((g.counters.rejected, {"outlast.guard": g.name}) for g in s.guards))],
            description="Calls the breaker refused at once",
        )
        m.create_observable_counter(
            "outlast.retries",
            [o(lambda s: ((g.counters.retries, {"outlast.guard": g.name}) for g in s.guards))],
            description="Sleeps before another try",
        )
        m.create_observable_counter(
            "outlast.retry.calls", [o(_retry_calls)], description="Calls that failed at least once"
        )
        m.create_observable_counter("outlast.faults", [o(_faults)], description="Faults judged")
        m.create_observable_counter(
            "outlast.commit.outcomes", [o(_commits)], description="Lost COMMITs by outcome"
        )
        m.create_observable_up_down_counter(
            "db.client.connection.count",
            [o(_connection_counts)],
            description="Connections by state",
        )
        m.create_observable_up_down_counter(
            "db.client.connection.max",
            [o(lambda s: _pools(s, lambda p: p.stats.max))],
            description="Most connections allowed",
        )
        m.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [o(lambda s: _pools(s, lambda p: p.stats.pending))],
            description="Requests waiting for a connection",
        )
        m.create_observable_counter(
            "db.client.connection.timeouts",
            [o(lambda s: _pools(s, lambda p: p.stats.timeouts))],
            description="Requests that gave up waiting for a connection",
        )
        m.create_observable_gauge(
            "outlast.task.up", [o(_tasks_up)], unit="1", description="1 while a task runs"
        )
        m.create_observable_counter(
            "outlast.task.restarts",
            [o(lambda s: ((t.status.restarts, _task(t)) for t in s.tasks))],
            description="Restarts of supervised tasks",
        )
        m.create_observable_gauge(
            "outlast.task.heartbeat_age",
            [
                o(
                    lambda s: (
                        (t.heartbeat_age, _task(t)) for t in s.tasks if t.heartbeat_age is not None
                    )
                )
            ],
            unit="s",
            description="Seconds since the task's last heartbeat",
        )
        m.create_observable_up_down_counter(
            "outlast.python.threads",
            [o(lambda s: [(s.threads, {})])],
            description="Python threads alive in the process",
        )
        m.create_observable_counter(
            "outlast.web.fault_responses",
            [o(_answers)],
            description="Answers the web integrations gave for database faults",
        )

    # -- traces ----------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Add `event` to the current span, if one is recording."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        name_attrs = _span_event(event)
        if name_attrs is not None:
            name, attributes = name_attrs
            span.add_event(name, {"outlast.guard": event.guard, **attributes})


def instrument(
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """Report outlast's metrics through `meter_provider` and its events on the current spans.

    Defaults to the global providers. Call once per provider.
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("outlast", outlast.__version__)
    return Instrumentation(meter, tracer_provider)


# --------------------------------------------------------------------- readers


def _breaker_states(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for g in s.guards:
        for state in ("closed", "half_open", "open"):
            yield (1.0 if g.breaker == state else 0.0), {"outlast.guard": g.name, "state": state}


def _transitions(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for g in s.guards:
        for state in ("closed", "half_open", "open"):
            yield g.counters.transitions.get(state, 0), {"outlast.guard": g.name, "to": state}


def _retry_calls(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for g in s.guards:
        c = g.counters
        yield c.succeeded_after_retry, {"outlast.guard": g.name, "kind": "successful_with_retry"}
        yield c.failed_after_retry, {"outlast.guard": g.name, "kind": "failed_with_retry"}
        yield c.failed_without_retry, {"outlast.guard": g.name, "kind": "failed_without_retry"}


def _faults(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for g in s.guards:
        for (kind, reason), n in g.counters.faults.items():
            yield n, {"outlast.guard": g.name, "error.type": kind, "outlast.reason": reason}


def _commits(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for g in s.guards:
        for outcome in ("committed", "aborted", "unknown"):
            yield g.counters.commits.get(outcome, 0), {"outlast.guard": g.name, "outcome": outcome}


def _pool_attrs(pool: Any) -> dict[str, Any]:
    return {
        **_DB,
        "db.client.connection.pool.name": pool.name,
        "outlast.driver": pool.driver,
        "outlast.guard": pool.guard or "",
    }


def _connection_counts(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for pool in s.pools:
        attrs = _pool_attrs(pool)
        yield pool.stats.idle, {**attrs, "db.client.connection.state": "idle"}
        yield pool.stats.used, {**attrs, "db.client.connection.state": "used"}


def _pools(
    s: Snapshot, value: Callable[[Any], float | None]
) -> Iterable[tuple[float, dict[str, Any]]]:
    for pool in s.pools:
        v = value(pool)
        if v is not None:
            yield v, _pool_attrs(pool)


def _task(t: Any) -> dict[str, Any]:
    return {"outlast.supervisor": t.supervisor, "outlast.task": t.status.name}


def _tasks_up(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for t in s.tasks:
        yield (1.0 if t.status.state in ("running", "restarting") else 0.0), _task(t)


def _answers(s: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
    for (guard, status, error, reason), n in s.answers.items():
        attrs = {"outlast.guard": guard, "http.response.status_code": status}
        yield n, {**attrs, "outlast.error": error, "outlast.reason": reason}


def _span_event(event: Event) -> tuple[str, dict[str, Any]] | None:
    fault = getattr(event, "fault", None)
    reason = {"outlast.reason": fault.reason, "error.type": fault.kind.value} if fault else {}
    if isinstance(event, RetryScheduled):
        return "outlast.retry", {
            **reason,
            "outlast.attempt": event.attempt,
            "outlast.sleep_s": event.sleep,
        }
    if isinstance(event, RetryGaveUp):
        return "outlast.retry.gave_up", {
            **reason,
            "outlast.attempts": event.attempts,
            "outlast.why": event.why,
        }
    if isinstance(event, CallRejected):
        return "outlast.call.rejected", {"outlast.retry_after_s": event.retry_after}
    if isinstance(event, BreakerOpened):
        return "outlast.breaker.opened", {**reason, "outlast.open_for_s": event.open_for}
    if isinstance(event, BreakerHalfOpen):
        return "outlast.breaker.half_open", {}
    if isinstance(event, BreakerClosed):
        return "outlast.breaker.closed", {"outlast.opened_for_s": event.opened_for}
    if isinstance(event, CommitResolved):
        return "outlast.commit.resolved", {"outlast.outcome": event.outcome}
    if isinstance(event, DatabaseDown):
        return "outlast.database.down", reason
    if isinstance(event, DatabaseRecovered):
        return "outlast.database.recovered", {"outlast.downtime_s": event.downtime}
    if isinstance(event, FaultAnswered):
        return "outlast.response.fault", {
            "http.response.status_code": event.status,
            "outlast.error": event.error,
            "outlast.reason": event.reason,
        }
    return None
