"""What metrics cost: the Guard's success path and one statement, with metrics off and on.

Run:  .venv/bin/python benchmarks/metrics.py            (about 40 s; starts an embedded PostgreSQL)
      .venv/bin/python benchmarks/metrics.py --quick    (a smoke run)

"Off" is a fresh process state; "on" registers ``outlast.prometheus`` with a
registry and instruments ``outlast.otel`` with the OpenTelemetry SDK, which
turns on the operation-duration histogram of the hardened connections and the
process-wide span-event listener. Guard figures are the best of several
repeats of N calls of a trivial function, in nanoseconds of this process's CPU
time; statement figures are ``SELECT 1`` through a hardened SQLAlchemy engine
(psycopg 3) on an embedded PostgreSQL, in microseconds. Each pair is measured
in alternation, and the ratio printed. The goal of the metrics issue: the
Guard's success path stays <= 500 ns per call with metrics on; a scrape itself
costs what ``generate_latest`` takes, printed last.
"""

from __future__ import annotations

import argparse
import logging
import time
import timeit
from collections.abc import Callable

import sqlalchemy as sa
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

import outlast
import outlast.otel
import outlast.prometheus
from outlast._core.guard.events import add_process_listener, remove_process_listener
from outlast._core.timing.operations import OPERATIONS
from outlast.sqlalchemy import create_engine
from outlast.testing import EmbeddedPostgres

logging.getLogger("outlast").setLevel(logging.CRITICAL)
TIMER = time.process_time
GOAL_NS = 500.0


def best(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=TIMER)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    args = parser.parse_args()
    calls, statements, rounds = (20_000, 200, 2) if args.quick else (200_000, 2_000, 5)

    guard = outlast.Guard("bench", listeners=())

    def work() -> int:
        return 1

    def guarded() -> None:
        guard.call(work)

    with EmbeddedPostgres() as pg:
        engine = create_engine(pg.url(), guard=guard)
        try:
            with engine.connect() as conn:

                def statement() -> None:
                    conn.execute(sa.text("SELECT 1"))

                registry = CollectorRegistry()
                outlast.prometheus.register(registry)
                reader = InMemoryMetricReader()
                otel = outlast.otel.instrument(
                    meter_provider=MeterProvider(metric_readers=[reader])
                )
                modes = ("off", "prometheus", "prometheus+otel")
                figures: dict[tuple[str, str], list[float]] = {}
                for _ in range(rounds):  # alternate, so a noisy neighbour hurts every mode
                    for mode in modes:
                        _metrics(mode, otel.on_event, otel.record)
                        g = best(guarded, calls, 3) * 1e9
                        st = best(statement, statements, 3) * 1e6
                        figures.setdefault(("g", mode), []).append(g)
                        figures.setdefault(("s", mode), []).append(st)
                _metrics("prometheus+otel", otel.on_event, otel.record)
                scrape = best(lambda: generate_latest(registry), 50, 3) * 1e3
                otel_collect = best(reader.get_metrics_data, 50, 3) * 1e3
        finally:
            engine.dispose()

    g = {mode: min(figures[("g", mode)]) for mode in modes}
    st = {mode: min(figures[("s", mode)]) for mode in modes}
    row = "{:36}{:>10}{:>12}{:>17}"
    print(row.format("", *modes))
    print(row.format("Guard.call success path (ns)", *(f"{g[m]:.0f}" for m in modes)))
    print(row.format("SELECT 1, hardened SQLAlchemy (us)", *(f"{st[m]:.1f}" for m in modes)))
    print(row.format("  ratio to off", "1.00", *(f"{st[m] / st['off']:.2f}" for m in modes[1:])))
    print(f"one Prometheus scrape: {scrape:.2f} ms")
    print(f"one OpenTelemetry collection: {otel_collect:.2f} ms")
    worst = max(g.values())
    verdict = "met" if worst <= GOAL_NS else "NOT met"
    print(
        f"goal: Guard success path <= {GOAL_NS:.0f} ns with metrics on: {verdict} ({worst:.0f} ns)"
    )


def _metrics(
    mode: str,
    listener: Callable[[outlast.Event], None],
    sink: Callable[[str, str, float, str], object],
) -> None:
    """Operation timing off, on for Prometheus, or on with the OpenTelemetry sink and listener."""
    OPERATIONS.enabled = mode != "off"
    OPERATIONS.set_sinks((sink,) if mode == "prometheus+otel" else ())
    if mode == "prometheus+otel":
        add_process_listener(listener)
    else:
        remove_process_listener(listener)


if __name__ == "__main__":
    main()
