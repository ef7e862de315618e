"""Per-slot numbers as metric samples, and the Prometheus text format.

`samples(report)` is what a metrics exporter reads: plain gauges with their
labels and help text, named ``outlast_replication_*``. The alert rules that
ship with this package (`alert_rules()`) use exactly these names, and
`render_prometheus` writes them in the text exposition format, e.g. for
node_exporter's textfile collector from a cron job
(``outlast slots --format prometheus > /var/lib/node_exporter/slots.prom``).

Gauges whose value is unknown are left out rather than reported as 0:
``time_to_loss_seconds`` is absent for a slot that is not falling behind,
``limit_bytes`` for an unbounded one, ``wal_status`` before PostgreSQL 13.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._report import Report
from ._thresholds import SlotReport

__all__ = ["METRICS", "Sample", "render_prometheus", "samples"]

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")

#: name -> help text, for every metric `samples` can produce.
METRICS: dict[str, str] = {
    "outlast_replication_slot_present": "1 if the slot exists, 0 for a watched slot that does not",
    "outlast_replication_slot_verdict": "outlast's verdict: 0 ok, 1 warn, 2 critical, 3 lost",
    "outlast_replication_slot_active": "1 if a consumer is connected to the slot",
    "outlast_replication_slot_retained_bytes": "WAL kept on disk for the slot (from restart_lsn)",
    "outlast_replication_slot_flush_lag_bytes": "WAL written since the consumer's last flush",
    "outlast_replication_slot_safe_wal_bytes": "the server's safe_wal_size: WAL left before loss",
    "outlast_replication_slot_limit_bytes": "retention limit (max_slot_wal_keep_size or budget)",
    "outlast_replication_slot_wal_status": "1 for the slot's current wal_status, 0 for the others",
    "outlast_replication_slot_inactive_seconds": "seconds without a consumer (0 when active)",
    "outlast_replication_slot_growth_bytes_per_second": "how fast retained WAL grows",
    "outlast_replication_slot_time_to_loss_seconds": "estimated seconds until the slot is lost",
    "outlast_replication_wal_position_bytes": "the server's current WAL position (LSN as a number)",
    "outlast_replication_wal_bytes_per_second": "how fast the server writes WAL",
    "outlast_replication_check_timestamp_seconds": "when the slots were last checked (epoch)",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One gauge value: ``name{labels} value``."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    @property
    def help(self) -> str:
        return METRICS[self.name]


def _slot_samples(s: SlotReport) -> list[Sample]:
    st = s.status
    labels = (
        ("slot", s.name),
        ("slot_type", "" if st is None else st.slot_type),
        ("database", "" if st is None or st.database is None else st.database),
    )

    def g(name: str, value: float | None, extra: tuple[tuple[str, str], ...] = ()) -> list[Sample]:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return []
        return [Sample(f"outlast_replication_slot_{name}", labels + extra, float(value))]

    out = g("present", 0 if st is None else 1) + g("verdict", int(s.verdict))
    if st is None:
        return out
    out += g("active", 1 if st.active else 0)
    out += g("retained_bytes", st.retained_bytes)
    out += g("flush_lag_bytes", st.flush_lag_bytes)
    out += g("safe_wal_bytes", st.safe_wal_size)
    out += g("limit_bytes", s.limit_bytes)
    if st.wal_status is not None:
        for status in WAL_STATUSES:
            out += g("wal_status", 1 if st.wal_status == status else 0, (("status", status),))
    out += g("inactive_seconds", 0.0 if st.active else s.inactive_for)
    out += g("growth_bytes_per_second", s.growth_rate)
    out += g("time_to_loss_seconds", s.time_to_loss)
    return out


def samples(report: Report) -> list[Sample]:
    """Every gauge for `report`, slot by slot, then the server's."""
    out: list[Sample] = []
    for slot in report.slots:
        out.extend(_slot_samples(slot))
    out.append(
        Sample(
            "outlast_replication_wal_position_bytes",
            (),
            float(report.snapshot.server.current_lsn),
        )
    )
    if report.wal_rate is not None:
        out.append(Sample("outlast_replication_wal_bytes_per_second", (), report.wal_rate))
    out.append(Sample("outlast_replication_check_timestamp_seconds", (), report.taken_at))
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render_prometheus(report_or_samples: Report | list[Sample]) -> str:
    """The Prometheus text exposition format (``# HELP``/``# TYPE`` once per metric)."""
    items = (
        samples(report_or_samples)
        if isinstance(report_or_samples, Report)
        else list(report_or_samples)
    )
    by_name: dict[str, list[Sample]] = {}
    for sample in items:
        by_name.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    for name, group in by_name.items():
        lines.append(f"# HELP {name} {METRICS[name]}")
        lines.append(f"# TYPE {name} gauge")
        for sample in group:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels)
            suffix = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{name}{suffix} {_number(sample.value)}")
    return "\n".join(lines) + "\n"
