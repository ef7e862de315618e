"""OpenTelemetry: the SDK's in-memory reader and span exporter see outlast's metrics and events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import outlast
import outlast.otel
from outlast._core.guard.events import remove_process_listener
from outlast.sqlalchemy import create_engine


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, Any, InMemorySpanExporter]]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    instrumentation = outlast.otel.instrument(meter_provider=meters)
    try:
        yield reader, tracers.get_tracer("test"), spans
    finally:
        remove_process_listener(instrumentation.on_event)
        meters.shutdown()
        tracers.shutdown()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def _value(points: list[Any], **attrs: Any) -> float:
    return sum(p.value for p in points if all(p.attributes.get(k) == v for k, v in attrs.items()))


MAIN = {"outlast.guard": "otel-main"}


class Refused(Exception):
    sqlstate = "57P03"  # starting up: UNAVAILABLE before the statement


def test_metrics_and_span_events_of_an_outage(otel: Any, pg_proxy: Any, pg_database: Any) -> None:
    reader, tracer, spans = otel
    guard = outlast.Guard(
        "otel-main",
        retry=outlast.Retry(
            attempts=3, timeout=5.0, backoff=outlast.Backoff(initial=0.01, cap=0.02)
        ),
        breaker=outlast.Breaker(failure_threshold=3, open_for=5.0),
        listeners=(),
    )
    engine = create_engine(pg_proxy.url(pg_database.name), guard=guard)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1

        def refused() -> None:
            raise Refused("the database system is starting up")

        with tracer.start_as_current_span("request"):
            with pytest.raises(outlast.DatabaseUnavailable):
                guard.call(refused)
            with pytest.raises(outlast.DatabaseUnavailable):
                guard.call(refused)  # rejected at once: the breaker is open
        points = _points(reader)
        assert _value(points["outlast.database.up"], **MAIN) == 0
        assert _value(points["outlast.breaker.state"], state="open", **MAIN) == 1
        assert _value(points["outlast.retries"], **MAIN) == 2
        assert _value(points["outlast.calls.rejected"], **MAIN) == 1
        faults = points["outlast.faults"]
        assert _value(faults, **MAIN, **{"outlast.reason": "starting_up"}) == 3
        used = points["db.client.connection.count"]
        assert any(p.attributes["db.system.name"] == "postgresql" for p in used)
        durations = [
            p for p in points["db.client.operation.duration"]
            if p.attributes.get("outlast.guard") == "otel-main"
        ]  # fmt: skip
        assert durations and sum(p.count for p in durations) >= 1
        (span,) = [s for s in spans.get_finished_spans() if s.name == "request"]
        names = [e.name for e in span.events]
        assert names.count("outlast.retry") == 2
        assert "outlast.breaker.opened" in names
        assert "outlast.retry.gave_up" in names
        assert "outlast.call.rejected" in names
        retry = next(e for e in span.events if e.name == "outlast.retry")
        assert retry.attributes is not None and retry.attributes["outlast.reason"] == "starting_up"
    finally:
        engine.dispose()
