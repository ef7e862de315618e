"""A change-data-capture slot whose consumer stopped, watched by outlast.replication.

Starts a private PostgreSQL (the embedded wheel) with ``wal_level=logical``
and ``max_slot_wal_keep_size=128MB``, creates a slot, and lets WAL grow one
real 16 MB segment per step while nothing consumes the slot. Time is
simulated (ten minutes per segment, through a `ManualClock`), so the
time-to-loss estimate reads as it would on a server writing ~27 kB/s. Each
step prints the monitor's verdict; at the end the consumer's stored offset
is checked as it would be at start-up.

    python examples/cdc_slots.py

Needs ``pip install 'outlast[embedded,psycopg]'``.
"""

from __future__ import annotations

import logging
import sys

import psycopg

from outlast.replication import (
    SlotMonitor,
    Verdict,
    check_offset,
    create_slot,
    format_bytes,
)
from outlast.testing import EmbeddedPostgres, ManualClock

SETTINGS = {
    "wal_level": "logical",
    "max_slot_wal_keep_size": "128MB",
    "max_wal_size": "32MB",
    "min_wal_size": "32MB",
    "checkpoint_timeout": "1h",
}


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="  log: %(message)s")
    with EmbeddedPostgres(settings=SETTINGS) as server:
        dsn = server.dsn()
        identity = create_slot(dsn, "cdc", plugin="test_decoding")
        stored = identity.created_lsn  # the consumer stored this, then stopped
        clock = ManualClock()
        print(f"slot cdc created at {stored}, epoch {identity.epoch[:8]}...")
        print(f"{'minute':>6}  {'retained':>9}  {'wal_status':<10}  {'ttl':>6}  verdict")
        with (
            SlotMonitor(dsn, slots=["cdc"], clock=clock, remind_every=3600) as monitor,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            conn.execute("CREATE TABLE filler (at timestamptz)")
            for step in range(20):
                report = monitor.check()["cdc"]
                ttl = "-" if report.time_to_loss is None else f"{report.time_to_loss / 60:.0f}m"
                print(
                    f"{step * 10:>6}  {format_bytes(report.retained_bytes):>9}  "
                    f"{report.wal_status or '-':<10}  {ttl:>6}  {report.verdict}"
                )
                if report.verdict is Verdict.LOST:
                    break
                conn.execute("INSERT INTO filler VALUES (now())")
                conn.execute("SELECT pg_switch_wal()")
                clock.advance(600)
        print("start-up check of the consumer's stored offset:")
        check = check_offset(dsn, slot="cdc", lsn=stored, epoch=identity.epoch, log=False)
        print(f"  {check.verdict}: {check.detail}")
        for strategy, resolution in check.resolutions().items():
            print(f"  {strategy!s:<18} -> {resolution.action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
