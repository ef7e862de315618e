"""``outlast slots``: replication slots as a table, JSON or Prometheus metrics; offset checks.

Exit codes (as Nagios-style checks use them, so cron and CI can act on them):
0 every slot is ok (or the offset is safe); 1 a slot is at ``warn``; 2 a
slot is ``critical`` or ``lost`` (or the offset is not safe); 3 the check
could not be made (database unreachable, bad option, malformed DSN).
Argument errors from argparse itself also exit with 2. Nothing printed
contains a password.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

__all__ = ["add_arguments", "run"]

OK, WARN, CRITICAL, UNKNOWN = 0, 1, 2, 3

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_SCALE = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float | None:
    """``"90"``, ``"90s"``, ``"30m"``, ``"6h"``, ``"1d"``; ``"off"`` for None."""
    if text.strip().lower() in ("off", "none"):
        return None
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 30m, 6h, off)")
    return float(match.group(1)) * _SCALE[match.group(2)]


def _size(text: str) -> str | None:
    return None if text.strip().lower() in ("off", "none") else text


def _fraction(text: str) -> float | None:
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (e.g. 0.5 or 50%)") from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``outlast slots``."""
    parser.add_argument(
        "--dsn", default=None, help="libpq DSN or URL (default: $OUTLAST_DSN, then $DATABASE_URL)"
    )
    parser.add_argument(
        "--slot",
        action="append",
        default=None,
        metavar="NAME",
        help="watch this slot (repeatable; a watched slot that is missing is 'lost'); "
        "default: every slot",
    )
    parser.add_argument(
        "--format", choices=["table", "json", "prometheus"], default="table", help="output"
    )
    parser.add_argument(
        "--sample",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="read twice, SECONDS apart, to measure how fast WAL grows (time to loss)",
    )
    th = parser.add_argument_group(
        "thresholds (sizes like 64MB or 1GiB; durations like 90, 30m, 6h; 'off' disables)"
    )
    th.add_argument("--warn-bytes", type=_size, default=None, metavar="SIZE", help="(off)")
    th.add_argument("--critical-bytes", type=_size, default=None, metavar="SIZE", help="(off)")
    th.add_argument(
        "--warn-fraction",
        type=_fraction,
        default=0.5,
        metavar="F",
        help="of max_slot_wal_keep_size or --wal-budget (0.5)",
    )
    th.add_argument("--critical-fraction", type=_fraction, default=0.8, metavar="F", help="(0.8)")
    th.add_argument(
        "--warn-time-to-loss", type=_duration, default=6 * 3600.0, metavar="D", help="(6h)"
    )
    th.add_argument(
        "--critical-time-to-loss", type=_duration, default=3600.0, metavar="D", help="(1h)"
    )
    th.add_argument(
        "--inactive-warn", type=_duration, default=1800.0, metavar="D", help="no consumer (30m)"
    )
    th.add_argument("--inactive-critical", type=_duration, default=None, metavar="D", help="(off)")
    th.add_argument(
        "--wal-budget",
        type=_size,
        default=None,
        metavar="SIZE",
        help="disk space WAL may fill (the limit when max_slot_wal_keep_size is unlimited)",
    )
    off = parser.add_argument_group("offset check (instead of the slot report)")
    off.add_argument(
        "--offset", default=None, metavar="LSN", help="the consumer's stored LSN (with one --slot)"
    )
    off.add_argument("--epoch", default=None, help="the slot epoch stored with the offset")
    off.add_argument("--system-identifier", default=None, help="stored with the offset")
    parser.add_argument(
        "--alert-rules", action="store_true", help="print the Prometheus alert rules and exit"
    )


def _fail(message: str, code: int = UNKNOWN) -> int:
    print(f"outlast slots: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Run ``outlast slots``; the exit code is described in the module docstring."""
    import outlast

    from ._alerts import alert_rules

    if args.alert_rules:
        sys.stdout.write(alert_rules())
        return OK
    dsn = args.dsn or os.environ.get("OUTLAST_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        return _fail("no DSN (use --dsn, OUTLAST_DSN or DATABASE_URL)")
    try:
        if args.offset is not None:
            return _offset(args, dsn)
        return _report(args, dsn)
    except outlast.ConfigurationError as exc:
        return _fail(str(exc))
    except outlast.DatabaseUnavailable as exc:
        fault = exc.fault
        why = f"{fault.kind.name.lower()}: {fault.reason}" if fault else "breaker open"
        return _fail(f"database unavailable ({why})")
    except Exception as exc:
        fault = outlast.classify(exc)
        if fault is None:
            raise
        return _fail(f"database error ({fault.kind.name.lower()}: {fault.reason})")


def _report(args: argparse.Namespace, dsn: str) -> int:
    from ._metrics import render_prometheus
    from ._monitor import SlotMonitor
    from ._thresholds import Thresholds, Verdict
    from ._units import format_bytes

    thresholds = Thresholds(
        warn_bytes=args.warn_bytes,
        critical_bytes=args.critical_bytes,
        warn_fraction=args.warn_fraction,
        critical_fraction=args.critical_fraction,
        warn_time_to_loss=args.warn_time_to_loss,
        critical_time_to_loss=args.critical_time_to_loss,
        inactive_warn=args.inactive_warn,
        inactive_critical=args.inactive_critical,
        wal_budget=args.wal_budget,
        rate_window=max(600.0, args.sample * 2),
    )
    if args.sample < 0:
        return _fail("--sample must be >= 0")
    with SlotMonitor(dsn, slots=args.slot, thresholds=thresholds, listeners=()) as monitor:
        report = monitor.check()
        if args.sample > 0:
            time.sleep(args.sample)
            report = monitor.check()
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    elif args.format == "prometheus":
        sys.stdout.write(render_prometheus(report))
    else:
        server = report.snapshot.server
        keep = server.max_slot_wal_keep_size
        print(
            f"PostgreSQL {server.major}  wal={server.current_lsn}  "
            f"max_slot_wal_keep_size={format_bytes(keep) if keep else 'unlimited'}"
            + (f"  wal_rate={format_bytes(report.wal_rate)}/s" if report.wal_rate else "")
        )
        print(report.table())
        if keep is None and thresholds.wal_budget is None and thresholds.warn_bytes is None:
            print(
                "note: max_slot_wal_keep_size is unlimited: the disk is the limit; "
                "give --warn-bytes/--critical-bytes or --wal-budget",
            )
        print(f"worst: {report.worst}")
    return {Verdict.OK: OK, Verdict.WARN: WARN}.get(report.worst, CRITICAL)


def _offset(args: argparse.Namespace, dsn: str) -> int:
    from ._offsets import check_offset

    if not args.slot or len(args.slot) != 1:
        return _fail("--offset needs exactly one --slot")
    check = check_offset(
        dsn,
        slot=args.slot[0],
        lsn=args.offset,
        epoch=args.epoch,
        system_identifier=args.system_identifier,
        log=False,
    )
    if args.format == "json":
        doc: dict[str, Any] = {
            "slot": check.slot,
            "stored_lsn": str(check.stored_lsn),
            "verdict": str(check.verdict),
            "safe": check.safe,
            "detail": check.detail,
            "current_lsn": str(check.current_lsn),
            "slot_position": None if check.slot_position is None else str(check.slot_position),
            "skipped_bytes": check.skipped_bytes,
            "strategies": {
                str(s): {
                    "action": r.action,
                    "start_lsn": None if r.start_lsn is None else str(r.start_lsn),
                    "loses_changes": r.loses_changes,
                    "silent": r.silent,
                    "explanation": r.explanation,
                }
                for s, r in check.resolutions().items()
            },
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"slot {check.slot}: offset {check.stored_lsn} is {check.verdict}")
        print(f"  {check.detail}")
        for strategy, r in check.resolutions().items():
            loss = (
                " (loses changes, silently)"
                if r.silent
                else (" (loses changes)" if r.loses_changes else "")
            )
            print(f"  {strategy!s:<18} {r.action}{loss}: {r.explanation}")
    return OK if check.safe else CRITICAL
