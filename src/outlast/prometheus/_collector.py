"""`OutlastCollector`: one `Snapshot` -> Prometheus metric families, at scrape time.

Names follow OpenTelemetry's database conventions where they exist
(``db_client_operation_duration_seconds``, ``db_client_connection_count``,
``db_client_connection_pending_requests``, ``db_client_connection_timeouts``,
all with ``db_system_name="postgresql"``) and Resilience4j's meanings for the
breaker and retries where they do not (``outlast_breaker_state{state}``,
``outlast_calls_rejected`` = not permitted calls, ``outlast_retry_calls{kind}``
with ``successful_with_retry`` / ``failed_with_retry`` / ``failed_without_retry``).
Every label value comes from a bounded vocabulary: Guard, pool, supervisor and
task names the application chose, fault kinds and reasons, HTTP statuses. No
SQL, no ids, no hosts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from outlast._core.telemetry.snapshot import Snapshot, snapshot
from outlast._core.timing.operations import BUCKETS

__all__ = ["OutlastCollector"]

_DB = "postgresql"
_BREAKER_STATES = ("closed", "half_open", "open")
_TASK_STATES = ("running", "restarting", "stalled", "failed", "stopped", "finished")
# Tasks in these states still do their work (a restarting one is between tries).
_ALIVE = frozenset({"running", "restarting"})
_RETRY_KINDS = (
    ("successful_with_retry", "succeeded_after_retry"),
    ("failed_with_retry", "failed_after_retry"),
    ("failed_without_retry", "failed_without_retry"),
)


class OutlastCollector(Collector):
    """Reports every live Guard, registered pool, supervisor and web integration.

    Register it once per registry (`outlast.prometheus.register` does); each
    scrape reads one `snapshot()`.
    """

    def describe(self) -> list[Metric]:
        # No fixed description: the families depend on what is alive, and an
        # empty describe() keeps the registry from calling collect() at
        # registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from families(snapshot())


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (separate from `collect` for tests)."""
    yield from _guard_families(snap)
    yield from _pool_families(snap)
    yield from _task_families(snap)
    yield from _web_and_operation_families(snap)
    yield from _runtime_families(snap)
    yield from _replication_families()


def _runtime_families(snap: Snapshot) -> Iterator[Metric]:
    """Threads and asyncio tasks: what grows when something leaks per outage."""
    yield GaugeMetricFamily(
        "outlast_python_threads", "Python threads alive in the process", value=snap.threads
    )
    if snap.asyncio_tasks is not None:
        yield GaugeMetricFamily(
            "outlast_asyncio_tasks",
            "Unfinished asyncio tasks on the event loop that served the scrape",
            value=snap.asyncio_tasks,
        )


def _replication_families() -> Iterator[Metric]:
    """The last check of every live `outlast.replication.SlotMonitor`, when the app has one."""
    replication = sys.modules.get("outlast.replication._monitor")
    if replication is None:  # the application does not watch slots: import nothing
        return
    from outlast.replication import samples
    from outlast.replication._metrics import METRICS

    by_name: dict[str, GaugeMetricFamily] = {}
    for monitor in list(replication.LIVE_MONITORS):
        report = monitor.last
        if report is None:
            continue
        for sample in samples(report):
            labels = dict(sample.labels)
            family = by_name.get(sample.name)
            if family is None:
                family = by_name[sample.name] = GaugeMetricFamily(
                    sample.name, METRICS[sample.name], labels=sorted(labels)
                )
            family.add_metric([labels[k] for k in sorted(labels)], sample.value)
    yield from by_name.values()


def _guard_families(snap: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "outlast_database_up", "1 while the Guard sees its database up, else 0", labels=["guard"]
    )
    down_for = GaugeMetricFamily(
        "outlast_database_down_for_seconds",
        "How long the current outage has lasted (0 while up)",
        labels=["guard"],
    )
    outages = CounterMetricFamily("outlast_database_outages", "Outages seen", labels=["guard"])
    downtime = CounterMetricFamily(
        "outlast_database_downtime_seconds", "Seconds down in total", labels=["guard"]
    )
    breaker = GaugeMetricFamily(
        "outlast_breaker_state", "1 for the breaker's current state", labels=["guard", "state"]
    )
    transitions = CounterMetricFamily(
        "outlast_breaker_transitions",
        "Breaker transitions, by the state entered",
        labels=["guard", "to"],
    )
    calls = CounterMetricFamily("outlast_calls", "Calls through the Guard", labels=["guard"])
    rejected = CounterMetricFamily(
        "outlast_calls_rejected",
        "Calls and requests refused at once by the breaker (not permitted)",
        labels=["guard"],
    )
    retries = CounterMetricFamily("outlast_retries", "Sleeps before another try", labels=["guard"])
    retry_calls = CounterMetricFamily(
        "outlast_retry_calls",
        "Calls that failed at least once, by outcome",
        labels=["guard", "kind"],
    )
    faults = CounterMetricFamily(
        "outlast_faults",
        "Database faults judged, by kind and reason",
        labels=["guard", "kind", "reason"],
    )
    commits = CounterMetricFamily(
        "outlast_commit_outcomes",
        "COMMITs whose reply was lost, by what pg_xact_status() said (unknown: not settled)",
        labels=["guard", "outcome"],
    )
    for g in snap.guards:
        c = g.counters
        up.add_metric([g.name], 1.0 if g.up else 0.0)
        down_for.add_metric([g.name], g.down_for)
        outages.add_metric([g.name], g.outages)
        downtime.add_metric([g.name], g.downtime)
        for state in _BREAKER_STATES:
            breaker.add_metric([g.name, state], 1.0 if g.breaker == state else 0.0)
        for state in _BREAKER_STATES:
            transitions.add_metric([g.name, state], c.transitions.get(state, 0))
        calls.add_metric([g.name], c.calls)
        rejected.add_metric([g.name], c.rejected)
        retries.add_metric([g.name], c.retries)
        for kind, attr in _RETRY_KINDS:
            retry_calls.add_metric([g.name, kind], getattr(c, attr))
        for (kind, reason), n in sorted(c.faults.items()):
            faults.add_metric([g.name, kind, reason], n)
        for outcome in ("committed", "aborted", "unknown"):
            commits.add_metric([g.name, outcome], c.commits.get(outcome, 0))
    yield from (up, down_for, outages, downtime, breaker, transitions, calls, rejected)
    yield from (retries, retry_calls, faults, commits)


def _pool_families(snap: Snapshot) -> Iterator[Metric]:
    labels = ["db_system_name", "db_client_connection_pool_name", "driver", "guard"]
    count = GaugeMetricFamily(
        "db_client_connection_count",
        "Connections by state",
        labels=[*labels, "db_client_connection_state"],
    )
    limit = GaugeMetricFamily("db_client_connection_max", "Most connections allowed", labels=labels)
    pending = GaugeMetricFamily(
        "db_client_connection_pending_requests", "Requests waiting for a connection", labels=labels
    )
    timeouts = CounterMetricFamily(
        "db_client_connection_timeouts",
        "Requests that gave up waiting for a connection",
        labels=labels,
    )
    waited = CounterMetricFamily(
        "outlast_pool_wait_seconds", "Time requests spent waiting for a connection", labels=labels
    )
    for pool in snap.pools:
        key = [_DB, pool.name, pool.driver, pool.guard or ""]
        stats = pool.stats
        count.add_metric([*key, "idle"], stats.idle)
        count.add_metric([*key, "used"], stats.used)
        if stats.max is not None:
            limit.add_metric(key, stats.max)
        if stats.pending is not None:
            pending.add_metric(key, stats.pending)
        if stats.timeouts is not None:
            timeouts.add_metric(key, stats.timeouts)
        if stats.wait_seconds is not None:
            waited.add_metric(key, stats.wait_seconds)
    yield from (count, limit, pending, timeouts, waited)


def _task_families(snap: Snapshot) -> Iterator[Metric]:
    labels = ["supervisor", "task"]
    alive = GaugeMetricFamily(
        "outlast_task_up", "1 while a supervised task is running or restarting", labels=labels
    )
    state = GaugeMetricFamily(
        "outlast_task_state", "1 for the task's state", labels=[*labels, "state"]
    )
    restarts = CounterMetricFamily("outlast_task_restarts", "Restarts of the task", labels=labels)
    age = GaugeMetricFamily(
        "outlast_task_heartbeat_age_seconds",
        "Seconds since the task's last heartbeat",
        labels=labels,
    )
    for task in snap.tasks:
        key = [task.supervisor, task.status.name]
        alive.add_metric(key, 1.0 if task.status.state in _ALIVE else 0.0)
        for name in _TASK_STATES:
            state.add_metric([*key, name], 1.0 if task.status.state == name else 0.0)
        restarts.add_metric(key, task.status.restarts)
        if task.heartbeat_age is not None:
            age.add_metric(key, task.heartbeat_age)
    yield from (alive, state, restarts, age)


def _web_and_operation_families(snap: Snapshot) -> Iterator[Metric]:
    answers = CounterMetricFamily(
        "outlast_web_fault_responses",
        "Answers the web integrations gave for database faults (503s by reason)",
        labels=["guard", "status", "error", "reason"],
    )
    for (guard, status, error, reason), n in sorted(snap.answers.items()):
        answers.add_metric([guard, str(status), error, reason], n)
    yield answers
    duration = HistogramMetricFamily(
        "db_client_operation_duration_seconds",
        "Duration of database operations (statements, COMMIT, ROLLBACK) on hardened connections",
        labels=["db_system_name", "guard", "driver", "error_type"],
    )
    for h in snap.operations:
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*BUCKETS, float("inf")), h.buckets, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        duration.add_metric([_DB, h.guard, h.driver, h.error], buckets, h.total)
    yield duration
