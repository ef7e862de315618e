"""Reading ``pg_replication_slots`` (and friends) through any DB-API connection.

One query for the server (version, recovery, WAL position, clock), one for
the retention settings, one for the slots joined to their WAL senders in
``pg_stat_replication``. Columns that an older server lacks are selected as
NULL, so one code path serves PostgreSQL 10 to 18: ``wal_status`` and
``safe_wal_size`` exist from 13, ``conflicting`` from 16, ``inactive_since``
and ``invalidation_reason`` from 17. LSNs travel as text and are parsed
exactly; intervals and timestamps as epoch seconds (``float8``), so psycopg 3
and psycopg2 give the same Python types. Only catalog views every role may
read are used; ``pg_control_system()`` is asked only when the role may run it.
"""

from __future__ import annotations

import re
from typing import Any

from outlast import OutlastError

from ._connect import rows as _rows
from ._model import ServerStatus, SlotStatus, Snapshot, WalSender, WalStatus
from ._units import Lsn

__all__ = ["read_server", "read_slots", "read_snapshot"]

_SETTINGS = (
    "wal_level",
    "max_slot_wal_keep_size",
    "wal_segment_size",
    "max_wal_size",
    "wal_keep_size",
)

#: The server's WAL position: written on a primary, received or replayed on a standby.
_POSITION = (
    "CASE WHEN pg_is_in_recovery() "
    "THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) "
    "ELSE pg_current_wal_lsn() END"
)

_SERVER_SQL = f"""
SELECT current_setting('server_version_num')::int,
       pg_is_in_recovery(),
       ({_POSITION})::text,
       extract(epoch from clock_timestamp())::float8,
       has_function_privilege('pg_control_system()', 'EXECUTE')
"""


_UNIT = re.compile(r"^(\d*)\s*(B|kB|MB|GB|TB)$")
_UNIT_BYTES = {"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _setting_bytes(setting: str, unit: str | None) -> int | None:
    """pg_settings' (setting, unit) as bytes; None for -1 ("unlimited") or no size unit."""
    try:
        value = int(setting)
    except ValueError:
        return None
    if value < 0 or unit is None:
        return None
    match = _UNIT.match(unit)
    if match is None:
        return None
    return value * int(match.group(1) or 1) * _UNIT_BYTES[match.group(2)]


def read_server(conn: Any, *, system_identifier: bool = True) -> ServerStatus:
    """The server's version, WAL position, clock and retention settings."""
    ((version_num, in_recovery, lsn_text, server_time, may_read_control),) = _rows(
        conn, _SERVER_SQL
    )
    if int(version_num) < 100000:
        raise OutlastError("outlast.replication needs PostgreSQL 10 or later")
    settings: dict[str, tuple[str, str | None]] = {
        name: (setting, unit)
        for name, setting, unit in _rows(
            conn,
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)",
            (list(_SETTINGS),),
        )
    }

    def size(name: str) -> int | None:
        return _setting_bytes(*settings[name]) if name in settings else None

    sysid = None
    if system_identifier and may_read_control:
        ((sysid,),) = _rows(conn, "SELECT system_identifier::text FROM pg_control_system()")
    return ServerStatus(
        version_num=int(version_num),
        in_recovery=bool(in_recovery),
        current_lsn=Lsn(lsn_text or 0),
        time=float(server_time),
        wal_level=settings["wal_level"][0] if "wal_level" in settings else None,
        max_slot_wal_keep_size=size("max_slot_wal_keep_size"),
        wal_segment_size=size("wal_segment_size"),
        max_wal_size=size("max_wal_size"),
        wal_keep_size=size("wal_keep_size"),
        system_identifier=sysid,
    )


def _slots_sql(version_num: int) -> str:
    def since(major: int, expr: str, null: str) -> str:
        return expr if version_num >= major * 10000 else null

    columns = [
        "s.slot_name",
        "s.slot_type",
        "s.plugin",
        "s.database",
        "s.temporary",
        "s.active",
        "s.active_pid",
        "s.restart_lsn::text",
        "s.confirmed_flush_lsn::text",
        since(13, "s.wal_status", "NULL::text"),
        since(13, "s.safe_wal_size::bigint", "NULL::bigint"),
        since(17, "extract(epoch from s.inactive_since)::float8", "NULL::float8"),
        since(17, "s.invalidation_reason", "NULL::text"),
        since(16, "s.conflicting", "NULL::boolean"),
        "r.pid",
        "r.application_name",
        "r.client_addr::text",
        "r.state",
        "r.sent_lsn::text",
        "r.write_lsn::text",
        "r.flush_lsn::text",
        "r.replay_lsn::text",
        "extract(epoch from r.write_lag)::float8",
        "extract(epoch from r.flush_lag)::float8",
        "extract(epoch from r.replay_lag)::float8",
        # The position again, per row: a slot read after the server query may
        # already be past the position that query saw.
        f"({_POSITION})::text",
    ]
    return (
        f"SELECT {', '.join(columns)} FROM pg_replication_slots s "
        "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid "
        "ORDER BY s.slot_name"
    )


def _lsn(text: str | None) -> Lsn | None:
    return None if text is None else Lsn(text)


def _behind(current: Lsn, position: Lsn | None) -> int | None:
    return None if position is None else max(0, current - position)


def read_slots(conn: Any, server: ServerStatus) -> tuple[SlotStatus, ...]:
    """Every replication slot, with retained WAL and flush lag against `server`."""
    slots = []
    for row in _rows(conn, _slots_sql(server.version_num)):
        (name, slot_type, plugin, database, temporary, active, active_pid) = row[:7]
        restart, confirmed = _lsn(row[7]), _lsn(row[8])
        wal_status, safe_wal_size, inactive_since, invalidation, conflicting = row[9:14]
        sender = None
        if row[14] is not None:
            sender = WalSender(
                pid=int(row[14]),
                application_name=row[15],
                client_addr=row[16],
                state=row[17],
                sent_lsn=_lsn(row[18]),
                write_lsn=_lsn(row[19]),
                flush_lsn=_lsn(row[20]),
                replay_lsn=_lsn(row[21]),
                write_lag=row[22],
                flush_lag=row[23],
                replay_lag=row[24],
            )
        position = max(server.current_lsn, Lsn(row[25] or 0))
        acknowledged = confirmed if slot_type == "logical" else sender and sender.flush_lsn
        status: WalStatus | None = wal_status
        slots.append(
            SlotStatus(
                name=name,
                slot_type=slot_type,
                plugin=plugin,
                database=database,
                temporary=bool(temporary),
                active=bool(active),
                active_pid=None if active_pid is None else int(active_pid),
                restart_lsn=restart,
                confirmed_flush_lsn=confirmed,
                wal_status=status,
                safe_wal_size=None if safe_wal_size is None else int(safe_wal_size),
                retained_bytes=_behind(position, restart),
                flush_lag_bytes=_behind(position, acknowledged or None),
                inactive_since=None if inactive_since is None else float(inactive_since),
                inactive_source=None if inactive_since is None else "server",
                invalidation_reason=invalidation,
                conflicting=conflicting,
                sender=sender,
            )
        )
    return tuple(slots)


def read_snapshot(conn: Any, *, taken_at: float, monotonic: float) -> Snapshot:
    """The server and every slot, read now."""
    server = read_server(conn)
    return Snapshot(
        server=server, slots=read_slots(conn, server), taken_at=taken_at, monotonic=monotonic
    )
