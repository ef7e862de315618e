"""Change-data-capture safety: replication-slot monitoring, offset checks, heartbeats.

::

    from outlast.replication import SlotMonitor, Thresholds, check_offset, Heartbeat

    # Which slots are about to lose their WAL (or fill the disk)?
    monitor = SlotMonitor(dsn, slots=["debezium"], thresholds=Thresholds(warn_bytes="5GB"))
    monitor.start(supervisor, every=30)   # logs [SLOT_WARN] [SLOT_CRITICAL] [SLOT_LOST]

    # At start-up: may the consumer resume from its stored offset?
    check = check_offset(dsn, slot="debezium", lsn=stored_lsn, epoch=stored_epoch)
    start_at = check.resume_point("trust_offset")   # or OffsetNotSafe, with the reason

    # Keep slots on idle databases moving.
    Heartbeat(dsn, publication="cdc", every=10).start(supervisor)

Also: `create_slot` / `drop_slot` / `slot_identity` (slot epochs, so a
recreated slot is named as such), `samples` / `render_prometheus` (per-slot
gauges), `alert_rules` (Prometheus rules for them) and the ``outlast slots``
command. Needs psycopg (``pip install 'outlast[psycopg]'``) or psycopg2 to
connect from a DSN; importing this package imports neither.
"""

from __future__ import annotations

from ._admin import create_slot, drop_slot, slot_identity
from ._alerts import alert_rules, alert_rules_file
from ._epochs import DEFAULT_EPOCH_TABLE, SlotIdentity, SlotNotFound
from ._heartbeat import Heartbeat
from ._metrics import METRICS, Sample, render_prometheus, samples
from ._model import ServerStatus, SlotStatus, Snapshot, WalSender
from ._monitor import SlotChange, SlotMonitor, log_slot_change
from ._offsets import (
    OffsetCheck,
    OffsetNotSafe,
    OffsetVerdict,
    Resolution,
    Strategy,
    check_offset,
)
from ._report import Report
from ._thresholds import SlotReport, Thresholds, Verdict
from ._units import Lsn, format_bytes, parse_bytes

__all__ = [
    "DEFAULT_EPOCH_TABLE",
    "METRICS",
    "Heartbeat",
    "Lsn",
    "OffsetCheck",
    "OffsetNotSafe",
    "OffsetVerdict",
    "Report",
    "Resolution",
    "Sample",
    "ServerStatus",
    "SlotChange",
    "SlotIdentity",
    "SlotMonitor",
    "SlotNotFound",
    "SlotReport",
    "SlotStatus",
    "Snapshot",
    "Strategy",
    "Thresholds",
    "Verdict",
    "WalSender",
    "alert_rules",
    "alert_rules_file",
    "check_offset",
    "create_slot",
    "drop_slot",
    "format_bytes",
    "log_slot_change",
    "parse_bytes",
    "render_prometheus",
    "samples",
    "slot_identity",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
