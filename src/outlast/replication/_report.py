"""`Report`: one check's verdicts, as a value for code, JSON, tables and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._model import Snapshot
from ._thresholds import SlotReport, Thresholds, Verdict
from ._units import format_bytes, format_duration

__all__ = ["Report"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """The verdict on every slot (and every watched slot that is missing) at one moment.

    `wal_rate` is how fast the server wrote WAL over the rate window
    (bytes/s; None until two checks were made).
    """

    snapshot: Snapshot
    slots: tuple[SlotReport, ...]
    thresholds: Thresholds
    wal_rate: float | None = None

    @property
    def worst(self) -> Verdict:
        """The worst verdict of all slots (OK when there are none)."""
        return max((s.verdict for s in self.slots), default=Verdict.OK)

    @property
    def taken_at(self) -> float:
        return self.snapshot.taken_at

    def __iter__(self) -> Iterator[SlotReport]:
        return iter(self.slots)

    def __getitem__(self, name: str) -> SlotReport:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.slots)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready document (bytes, seconds, epoch times; LSNs as ``X/Y`` text)."""
        server = self.snapshot.server
        return {
            "taken_at": self.snapshot.taken_at,
            "worst": str(self.worst),
            "server": {
                "version_num": server.version_num,
                "in_recovery": server.in_recovery,
                "current_lsn": str(server.current_lsn),
                "wal_level": server.wal_level,
                "max_slot_wal_keep_size": server.max_slot_wal_keep_size,
                "wal_segment_size": server.wal_segment_size,
                "wal_rate": self.wal_rate,
            },
            "slots": [_slot_dict(s) for s in self.slots],
        }

    def table(self) -> str:
        """A plain-text table, one slot a line, for terminals and cron mail."""
        header = (
            "slot",
            "type",
            "active",
            "wal_status",
            "retained",
            "limit",
            "used",
            "ttl",
            "inactive",
            "verdict",
        )
        rows = [header]
        for s in self.slots:
            st = s.status
            rows.append(
                (
                    s.name,
                    "-" if st is None else st.slot_type,
                    "-" if st is None else ("yes" if st.active else "no"),
                    "missing" if st is None else (st.wal_status or "-"),
                    format_bytes(s.retained_bytes),
                    format_bytes(s.limit_bytes) if s.limit_bytes else "none",
                    "-" if s.used_fraction is None else f"{s.used_fraction:.0%}",
                    format_duration(s.time_to_loss),
                    format_duration(s.inactive_for),
                    str(s.verdict),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        ]
        for s in self.slots:
            for reason in s.reasons:
                lines.append(f"{s.name}: {reason}")
        if not self.slots:
            lines.append("(no replication slots)")
        return "\n".join(lines)


def _slot_dict(s: SlotReport) -> dict[str, Any]:
    st = s.status
    doc: dict[str, Any] = {
        "name": s.name,
        "verdict": str(s.verdict),
        "reasons": list(s.reasons),
        "exists": st is not None,
        "limit_bytes": s.limit_bytes,
        "used_fraction": s.used_fraction,
        "bytes_left": s.bytes_left,
        "growth_rate": s.growth_rate,
        "time_to_loss": s.time_to_loss,
        "inactive_for": s.inactive_for,
    }
    if st is not None:
        doc.update(
            {
                "slot_type": st.slot_type,
                "plugin": st.plugin,
                "database": st.database,
                "temporary": st.temporary,
                "active": st.active,
                "active_pid": st.active_pid,
                "restart_lsn": None if st.restart_lsn is None else str(st.restart_lsn),
                "confirmed_flush_lsn": (
                    None if st.confirmed_flush_lsn is None else str(st.confirmed_flush_lsn)
                ),
                "wal_status": st.wal_status,
                "safe_wal_size": st.safe_wal_size,
                "retained_bytes": st.retained_bytes,
                "flush_lag_bytes": st.flush_lag_bytes,
                "inactive_since": st.inactive_since,
                "inactive_source": st.inactive_source,
                "invalidation_reason": st.invalidation_reason,
            }
        )
        if st.sender is not None:
            doc["sender"] = {
                "pid": st.sender.pid,
                "application_name": st.sender.application_name,
                "state": st.sender.state,
                "write_lag": st.sender.write_lag,
                "flush_lag": st.sender.flush_lag,
                "replay_lag": st.sender.replay_lag,
            }
    return doc
