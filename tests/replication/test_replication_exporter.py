"""The slot monitor's last check shows up in ``outlast.prometheus``'s exposition."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from repl_kit import drop_slots, sql

import outlast.prometheus
from outlast.replication import SlotMonitor


def test_the_exporter_reports_the_last_check_of_every_live_monitor(repl_db: Any) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('exported', 'test_decoding')")
    registry = CollectorRegistry()
    outlast.prometheus.register(registry)
    try:
        with SlotMonitor(repl_db.dsn(), slots=["exported"]) as monitor:
            before = generate_latest(registry).decode()
            assert 'slot="exported"' not in before  # nothing checked yet: nothing reported
            monitor.check()
            text = generate_latest(registry).decode()
    finally:
        drop_slots(repl_db.admin_dsn)
    samples = {
        (s.name, s.labels.get("slot")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert ("outlast_replication_slot_verdict", "exported") in samples
    assert samples[("outlast_replication_slot_verdict", "exported")] == 0  # ok
    assert any(name == "outlast_replication_wal_position_bytes" for name, _ in samples)
