"""The replication part of a health endpoint (``application/health+json``).

Built from the monitor's last report, never from a query: a health request
must answer at once even when the database does not. One check per slot
(``replication:slots``) with its retained WAL as the observed value, and one
for the monitor itself (``replication:check``: when it last succeeded, and
the reason word of its last failure). Nothing here names a host or prints a
fault's message.

Status: a ``warn`` slot makes the document ``warn``; ``critical`` or
``lost`` make it ``fail`` (HTTP 503). No report yet, or one older than
`stale_after`, is ``warn``.
"""

from __future__ import annotations

import time
from typing import Any

from ._report import Report
from ._thresholds import Verdict

__all__ = ["health_document"]

_STATUS = {
    Verdict.OK: "pass",
    Verdict.WARN: "warn",
    Verdict.CRITICAL: "fail",
    Verdict.LOST: "fail",
}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _worst(statuses: list[str]) -> str:
    for status in ("fail", "warn"):
        if status in statuses:
            return status
    return "pass"


def health_document(
    report: Report | None,
    *,
    age: float | None,
    stale_after: float | None,
    failure: tuple[float, str] | None,
) -> tuple[int, dict[str, Any]]:
    """``(status code, document)`` for the last `report` (None: no check succeeded yet)."""
    statuses: list[str] = []
    check: dict[str, Any] = {"componentType": "component"}
    if report is None:
        check["status"] = "warn"
        check["output"] = "no slot report yet"
    else:
        check["time"] = _iso(report.taken_at)
        check["observedValue"] = None if age is None else round(age, 3)
        check["observedUnit"] = "s"
        stale = stale_after is not None and age is not None and age > stale_after
        check["status"] = "warn" if stale else "pass"
        if stale:
            check["output"] = "slot report is stale"
    if failure is not None:
        check["status"] = "warn"
        check["output"] = f"last check failed at {_iso(failure[0])}: {failure[1]}"
    statuses.append(check["status"])
    slots: list[dict[str, Any]] = []
    for slot in report.slots if report is not None else ():
        status = _STATUS[slot.verdict]
        statuses.append(status)
        entry: dict[str, Any] = {
            "componentId": slot.name,
            "componentType": "datastore",
            "status": status,
            "verdict": str(slot.verdict),
            "observedValue": slot.retained_bytes,
            "observedUnit": "bytes",
            "wal_status": slot.wal_status,
            "active": slot.active,
            "time": _iso(report.taken_at) if report is not None else None,
        }
        if slot.time_to_loss is not None:
            entry["time_to_loss_s"] = round(slot.time_to_loss, 1)
        if slot.reasons:
            entry["output"] = "; ".join(slot.reasons)
        slots.append(entry)
    overall = _worst(statuses)
    doc: dict[str, Any] = {
        "status": overall,
        "description": "replication slots",
        "checks": {"replication:check": [check], "replication:slots": slots},
    }
    return (503 if overall == "fail" else 200), doc
