"""What the server says about its replication slots, as plain frozen values.

A `Snapshot` is one reading: the server's WAL position and retention
settings (`ServerStatus`) and every slot (`SlotStatus`, with its WAL sender
from ``pg_stat_replication`` when one is connected). Byte counts are computed
here from exact LSNs, never from rounded sizes. Nothing in this module does
I/O; `_read` fills these values in and `_thresholds` judges them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._units import Lsn

__all__ = ["InactiveSource", "ServerStatus", "SlotStatus", "Snapshot", "WalSender", "WalStatus"]

#: ``pg_replication_slots.wal_status`` (PostgreSQL 13+).
WalStatus = Literal["reserved", "extended", "unreserved", "lost"]
#: Where `SlotStatus.inactive_since` comes from: the server (17+) or outlast's own tracking.
InactiveSource = Literal["server", "outlast"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStatus:
    """The server side of a snapshot.

    `current_lsn` is ``pg_current_wal_lsn()`` (on a standby, the last WAL
    received or replayed). `max_slot_wal_keep_size` is in bytes, None when
    unlimited (``-1``, the default) or unknown (before 13). `time` is the
    server's clock (epoch seconds) at the reading.
    """

    version_num: int
    in_recovery: bool
    current_lsn: Lsn
    time: float
    wal_level: str | None = None
    max_slot_wal_keep_size: int | None = None
    wal_segment_size: int | None = None
    max_wal_size: int | None = None
    wal_keep_size: int | None = None
    system_identifier: str | None = None

    @property
    def major(self) -> int:
        """The major version (``18`` for 180006)."""
        return self.version_num // 10000


@dataclass(frozen=True, slots=True, kw_only=True)
class WalSender:
    """The ``pg_stat_replication`` row of the process holding a slot (None fields: not visible)."""

    pid: int
    application_name: str | None = None
    client_addr: str | None = None
    state: str | None = None
    sent_lsn: Lsn | None = None
    write_lsn: Lsn | None = None
    flush_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None
    write_lag: float | None = None
    flush_lag: float | None = None
    replay_lag: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotStatus:
    """One row of ``pg_replication_slots`` with the byte counts that matter.

    `retained_bytes` is how much WAL the slot keeps on disk (from its
    ``restart_lsn`` to the current position); `flush_lag_bytes` is how far
    its consumer's acknowledgement is behind (``confirmed_flush_lsn`` for a
    logical slot, the WAL sender's flush position for a physical one).
    `inactive_since` is epoch seconds: the server's ``inactive_since`` on
    PostgreSQL 17+, otherwise when outlast first saw the slot inactive
    (`inactive_source` says which; outlast's is "at or before").
    """

    name: str
    slot_type: str
    plugin: str | None
    database: str | None
    temporary: bool
    active: bool
    active_pid: int | None
    restart_lsn: Lsn | None
    confirmed_flush_lsn: Lsn | None
    wal_status: WalStatus | None
    safe_wal_size: int | None
    retained_bytes: int | None
    flush_lag_bytes: int | None
    inactive_since: float | None = None
    inactive_source: InactiveSource | None = None
    invalidation_reason: str | None = None
    conflicting: bool | None = None
    sender: WalSender | None = None

    @property
    def invalidated(self) -> bool:
        """True when the server will never stream from this slot again."""
        return (
            self.wal_status == "lost"
            or self.invalidation_reason is not None
            or bool(self.conflicting)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One reading of the server and its slots.

    `taken_at` is the client's wall clock, `monotonic` its monotonic clock
    (for rates), both from the monitor's clock.
    """

    server: ServerStatus
    slots: tuple[SlotStatus, ...]
    taken_at: float
    monotonic: float

    def slot(self, name: str) -> SlotStatus | None:
        """The slot called `name`, or None."""
        return next((s for s in self.slots if s.name == name), None)
