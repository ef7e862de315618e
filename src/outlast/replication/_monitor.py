"""`SlotMonitor`: watches replication slots and says which ones are in danger.

::

    from outlast.replication import SlotMonitor, Thresholds

    monitor = SlotMonitor("host=db dbname=app", slots=["debezium"],
                          thresholds=Thresholds(warn_bytes="5GB", critical_bytes="20GB"))
    report = monitor.check()            # through the Guard; logs changes of verdict
    report["debezium"].verdict          # Verdict.OK / WARN / CRITICAL / LOST
    monitor.start(supervisor, every=30) # or a supervised loop
    monitor.health()                    # (status code, application/health+json document)

Each check reads every slot once (`_read`), adds outlast's own bookkeeping
(growth rates over the rate window; on PostgreSQL before 17, which has no
``inactive_since``, when each slot was first seen without a consumer),
judges each slot (`_thresholds.judge`) and tells listeners about every
change of verdict. The default listener logs ``[SLOT_WARN]``,
``[SLOT_CRITICAL]``, ``[SLOT_LOST]`` and ``[SLOT_OK]`` (and reminds every
`remind_every` while a slot stays bad).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import outlast
from outlast import ConfigurationError, Hardening
from outlast.supervise import Loop, Supervisor

from ._connect import Connection, Driver, Source
from ._epochs import DEFAULT_EPOCH_TABLE, quote_table, retire_missing
from ._health import health_document
from ._model import SlotStatus, Snapshot
from ._rate import RateWindow
from ._read import read_snapshot
from ._report import Report
from ._thresholds import SlotReport, Thresholds, Verdict, judge, missing_report
from ._units import format_bytes, format_duration, optional_duration

__all__ = ["SlotChange", "SlotMonitor", "log_slot_change"]

logger = logging.getLogger("outlast")


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotChange:
    """A slot's verdict changed (or, with `reminder`, is still bad)."""

    monitor: str
    slot: str
    previous: Verdict | None
    current: Verdict
    report: SlotReport
    reminder: bool = False


_TAGS = {
    Verdict.OK: ("[SLOT_OK]", logging.INFO, "slot_ok"),
    Verdict.WARN: ("[SLOT_WARN]", logging.WARNING, "slot_warn"),
    Verdict.CRITICAL: ("[SLOT_CRITICAL]", logging.ERROR, "slot_critical"),
    Verdict.LOST: ("[SLOT_LOST]", logging.ERROR, "slot_lost"),
}


def log_slot_change(change: SlotChange) -> None:
    """The default listener: one log line per change of verdict, with the seeds' tags."""
    r = change.report
    tag, level, event = _TAGS[change.current]
    used = "-" if r.used_fraction is None else f"{r.used_fraction:.0%}"
    if change.current is Verdict.OK:
        message = "%s slot=%s was=%s retained=%s"
        args: tuple[Any, ...] = (tag, r.name, change.previous, format_bytes(r.retained_bytes))
    else:
        message = "%s slot=%s retained=%s limit=%s used=%s wal_status=%s active=%s ttl=%s why=%s"
        args = (
            tag,
            r.name,
            format_bytes(r.retained_bytes),
            format_bytes(r.limit_bytes) if r.limit_bytes else "none",
            used,
            r.wal_status or ("missing" if r.status is None else "-"),
            "yes" if r.active else "no",
            format_duration(r.time_to_loss),
            r.summary(),
        )
        if change.reminder:
            message += " (still)"
    logger.log(
        level,
        message,
        *args,
        extra={
            "outlast_event": event,
            "monitor": change.monitor,
            "slot": r.name,
            "verdict": str(change.current),
            "previous": None if change.previous is None else str(change.previous),
            "retained_bytes": r.retained_bytes,
            "wal_status": r.wal_status,
            "time_to_loss": r.time_to_loss,
            "reminder": change.reminder,
        },
    )


class _SystemTime:
    """The real clock (only the two readings a monitor needs)."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


LIVE_MONITORS: weakref.WeakSet[SlotMonitor] = weakref.WeakSet()
"""Every slot monitor alive in this process (``outlast.prometheus`` reports their last checks)."""


class SlotMonitor:
    """Checks replication slots against `thresholds`; see the module docstring.

    `source` is a DSN or a function returning a DB-API connection. `slots`
    names the slots to watch (a watched slot that disappears is ``lost``);
    None watches every slot on the server. Reads go through `guard` (default:
    a Guard named after the monitor), so an outage is retried, counted and
    logged like any other database call.

    `track_inactivity`: None (default) tracks inactivity itself on servers
    before PostgreSQL 17 and uses the server's ``inactive_since`` from 17;
    True/False force it. `track_epochs=True` retires the epochs of dropped
    slots in `epoch_table` at each check (needs write access; see
    `create_slot`). `ready_fails_on`: the verdict at which `ready()` turns
    False (None: never). `stale_after`: how old the last good check may be
    before `health()` says so.
    """

    def __init__(
        self,
        source: Source,
        *,
        slots: Iterable[str] | None = None,
        thresholds: Thresholds | None = None,
        guard: outlast.Guard | None = None,
        name: str = "replication",
        preset: str | Hardening = "default",
        driver: Driver = "auto",
        clock: outlast.Clock | None = None,
        track_inactivity: bool | None = None,
        track_epochs: bool = False,
        epoch_table: str = DEFAULT_EPOCH_TABLE,
        listeners: Iterable[Callable[[SlotChange], None]] | None = None,
        remind_every: float | datetime.timedelta | None = datetime.timedelta(minutes=10),
        stale_after: float | datetime.timedelta = datetime.timedelta(minutes=5),
        ready_fails_on: Verdict | None = Verdict.LOST,
    ) -> None:
        if isinstance(slots, str):
            raise ConfigurationError("slots must be a list of slot names, not one string")
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise ConfigurationError("thresholds must be an outlast.replication.Thresholds")
        if ready_fails_on is not None and not isinstance(ready_fails_on, Verdict):
            raise ConfigurationError("ready_fails_on must be a Verdict or None")
        if track_inactivity not in (None, True, False):
            raise ConfigurationError("track_inactivity must be None, True or False")
        if track_epochs:
            quote_table(epoch_table)
        self.name = name
        self.watched: tuple[str, ...] | None = None if slots is None else tuple(slots)
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.guard = guard if guard is not None else outlast.Guard(name)
        self.track_inactivity = track_inactivity
        self.track_epochs = track_epochs
        self.epoch_table = epoch_table
        self.listeners: tuple[Callable[[SlotChange], None], ...] = (
            (log_slot_change,) if listeners is None else tuple(listeners)
        )
        self.remind_every = optional_duration(remind_every, "remind_every")
        self.stale_after = optional_duration(stale_after, "stale_after")
        self.ready_fails_on = ready_fails_on
        self._clock: Any = clock if clock is not None else _SystemTime()
        self._conn = Connection(source, preset=preset, driver=driver)
        self._serial = threading.Lock()
        self._windows: dict[str, RateWindow] = {}
        self._wal_window = RateWindow(self.thresholds.rate_window)
        self._inactive_seen: dict[str, float] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._told_at: dict[str, float] = {}
        self._unreserved: set[str] = set()
        self._last: Report | None = None
        LIVE_MONITORS.add(self)
        self._last_failure: tuple[float, str] | None = None

    # -- checking -------------------------------------------------------------------

    def check(self) -> Report:
        """Read every slot now (through the Guard), judge, notify listeners, return the report.

        Raises what the Guard raises (`outlast.DatabaseUnavailable` during an
        outage) or a permanent error (e.g. permission denied).
        """
        return self._run(
            lambda: self.guard.call(self._read, idempotent=True, op=f"{self.name}.check")
        )

    def _tick(self) -> None:
        # A loop tick: the loop is the retry and reports to the Guard itself.
        self._run(self._read)

    def _run(self, read: Callable[[], Snapshot]) -> Report:
        # One check at a time, read and judged in order: rates and transitions
        # must never see an older reading after a newer one. Listeners run
        # after, outside the lock.
        with self._serial:
            report, changes = self._conclude(self._guarded(read))
        for change in changes:
            for listener in self.listeners:
                try:
                    listener(change)
                except Exception:
                    logger.exception("slot listener %r failed", listener)
        return report

    def _guarded(self, read: Callable[[], Snapshot]) -> Snapshot:
        try:
            return read()
        except Exception as exc:
            fault = outlast.classify(exc)
            why = getattr(exc, "fault", None) or fault
            reason = (
                f"{why.kind.name.lower()}: {why.reason}" if why is not None else type(exc).__name__
            )
            self._last_failure = (self._clock.time(), reason)
            raise

    def _read(self) -> Snapshot:
        def read(conn: Any) -> Snapshot:
            snapshot = read_snapshot(
                conn, taken_at=self._clock.time(), monotonic=self._clock.monotonic()
            )
            if self.track_epochs:
                for slot, epoch in retire_missing(conn, self.epoch_table):
                    logger.warning(
                        "[SLOT_DROPPED] slot=%s epoch=%s (its epoch is retired: "
                        "a slot created again under this name is a new slot)",
                        slot,
                        epoch,
                        extra={"outlast_event": "slot_dropped", "slot": slot, "epoch": epoch},
                    )
            return snapshot

        return self._conn.run(read)

    def _conclude(self, snapshot: Snapshot) -> tuple[Report, list[SlotChange]]:
        report = self._judge(snapshot)
        changes = self._changes(report)
        self._last = report
        self._last_failure = None
        return report, changes

    def _tracking(self, snapshot: Snapshot) -> bool:
        if self.track_inactivity is not None:
            return self.track_inactivity
        return snapshot.server.major < 17

    def _track(self, slot: SlotStatus, snapshot: Snapshot) -> SlotStatus:
        if slot.active:
            self._inactive_seen.pop(slot.name, None)
            return dataclasses.replace(slot, inactive_since=None, inactive_source=None)
        since = self._inactive_seen.setdefault(slot.name, snapshot.taken_at)
        return dataclasses.replace(slot, inactive_since=since, inactive_source="outlast")

    def _judge(self, snapshot: Snapshot) -> Report:
        present = {s.name for s in snapshot.slots}
        for gone in set(self._windows) - present:
            del self._windows[gone]
        for gone in set(self._inactive_seen) - present:
            del self._inactive_seen[gone]
        self._wal_window.add(snapshot.monotonic, float(snapshot.server.current_lsn))
        tracking = self._tracking(snapshot)
        reports: list[SlotReport] = []
        for slot in snapshot.slots:
            if self.watched is not None and slot.name not in self.watched:
                continue
            if tracking:
                slot = self._track(slot, snapshot)
            window = self._windows.setdefault(slot.name, RateWindow(self.thresholds.rate_window))
            if slot.retained_bytes is None:
                window.clear()
            else:
                window.add(snapshot.monotonic, float(slot.retained_bytes))
            reports.append(judge(slot, snapshot, self.thresholds, growth_rate=window.rate()))
        for name in self.watched or ():
            if name not in present:
                reports.append(missing_report(name))
        return Report(
            snapshot=snapshot,
            slots=tuple(reports),
            thresholds=self.thresholds,
            wal_rate=self._wal_window.rate(),
        )

    def _changes(self, report: Report) -> list[SlotChange]:
        now = report.snapshot.monotonic
        changes = []
        reported = set()
        for slot in report.slots:
            reported.add(slot.name)
            previous = self._verdicts.get(slot.name)
            self._verdicts[slot.name] = slot.verdict
            # Turning unreserved is news even when the verdict was already
            # critical: the next checkpoint, not a trend, decides now.
            newly_unreserved = slot.wal_status == "unreserved" and slot.name not in self._unreserved
            if slot.wal_status == "unreserved":
                self._unreserved.add(slot.name)
            else:
                self._unreserved.discard(slot.name)
            changed = slot.verdict != previous and not (
                previous is None and slot.verdict is Verdict.OK
            )
            if changed or newly_unreserved:
                self._told_at[slot.name] = now
                changes.append(
                    SlotChange(
                        monitor=self.name,
                        slot=slot.name,
                        previous=previous,
                        current=slot.verdict,
                        report=slot,
                    )
                )
            elif (
                slot.verdict is not Verdict.OK
                and self.remind_every is not None
                and now - self._told_at.get(slot.name, now) >= self.remind_every
            ):
                self._told_at[slot.name] = now
                changes.append(
                    SlotChange(
                        monitor=self.name,
                        slot=slot.name,
                        previous=previous,
                        current=slot.verdict,
                        report=slot,
                        reminder=True,
                    )
                )
        for gone in set(self._verdicts) - reported:
            del self._verdicts[gone]
            self._told_at.pop(gone, None)
            self._unreserved.discard(gone)
        return changes

    # -- what others read -------------------------------------------------------------

    @property
    def last(self) -> Report | None:
        """The report of the last successful check (None before the first)."""
        return self._last

    def ready(self) -> bool:
        """For ``ready=`` of the web integrations: False once a slot reaches `ready_fails_on`.

        Never queries. False before the first successful check when
        `ready_fails_on` is set (a consumer that cannot see its slot yet is not
        ready). Keep it off (``ready_fails_on=None``) in services whose web
        traffic does not depend on the slot: a shared problem that turns
        every pod unready turns 503s into refused connections.
        """
        if self.ready_fails_on is None:
            return True
        last = self._last
        return last is not None and last.worst < self.ready_fails_on

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status code, application/health+json document)`` from the last report (no query)."""
        age = None if self._last is None else self._clock.time() - self._last.taken_at
        return health_document(
            self._last,
            age=age,
            stale_after=self.stale_after,
            failure=self._last_failure,
        )

    # -- running ------------------------------------------------------------------------

    def loop(
        self,
        *,
        every: float | datetime.timedelta = 30.0,
        heartbeat: float | datetime.timedelta | None = None,
    ) -> Loop[None]:
        """A periodic `outlast.supervise.Loop` that checks every `every` seconds."""
        return outlast.loop(every=every, guard=self.guard, name=self.name, heartbeat=heartbeat)(
            self._tick
        )

    def start(
        self,
        supervisor: Supervisor,
        *,
        every: float | datetime.timedelta = 30.0,
        heartbeat: float | datetime.timedelta | None = None,
    ) -> None:
        """Check every `every` seconds in a thread of `supervisor` (restarted if it crashes)."""
        self.loop(every=every, heartbeat=heartbeat).start(supervisor)

    def run_forever(
        self,
        stop_event: threading.Event | None = None,
        *,
        every: float | datetime.timedelta = 30.0,
    ) -> None:
        """Check every `every` seconds in the calling thread until `stop_event` is set."""
        self.loop(every=every).run_forever(stop_event)

    def close(self) -> None:
        """Close the monitor's connection."""
        self._conn.close()

    def __enter__(self) -> SlotMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        watched = "all" if self.watched is None else ",".join(self.watched)
        return f"<SlotMonitor {self.name!r} slots={watched}>"
