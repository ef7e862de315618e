"""Slot epochs: telling a recreated slot from the one a consumer knew.

PostgreSQL gives a replication slot no identity beyond its name: a slot that
was dropped and created again under the same name looks like the old one
that merely moved on (Debezium DBZ-5739: changes were skipped silently).
outlast keeps a small registry table in the slot's database,
``outlast_slot_epochs(slot_name, epoch, created_lsn, registered_at,
adopted)``: a random *epoch* per slot life. The consumer stores the epoch
next to its offset; `check_offset` then names a recreated slot as such.

- `create_slot` creates a logical slot and registers a fresh epoch (exact:
  ``created_lsn`` is the slot's consistent point).
- `drop_slot` drops a slot and retires its epoch.
- `slot_identity` returns the epoch of an existing slot, registering one
  (``adopted``) for a slot created by someone else.
- A `SlotMonitor` with ``track_epochs=True`` retires the epoch of every slot
  that no longer exists, so a slot dropped and recreated by another tool
  (Debezium recreates missing slots) gets a new epoch when it is next adopted.

A drop and re-create by another tool between two checks of such a monitor
cannot be seen; `check_offset` still reports the skipped changes (the new
slot starts past the stored offset), only without naming the cause.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from outlast import ConfigurationError, OutlastError

from ._connect import rows as _rows
from ._units import Lsn

__all__ = [
    "DEFAULT_EPOCH_TABLE",
    "SlotIdentity",
    "SlotNotFound",
    "create_slot_sql",
    "ensure_table",
    "quote_ident",
    "quote_table",
    "read_epoch",
    "register",
    "retire_missing",
]

DEFAULT_EPOCH_TABLE = "outlast_slot_epochs"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class SlotNotFound(OutlastError, LookupError):
    """The replication slot does not exist on the server."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotIdentity:
    """Who a slot is: store `epoch` (and `system_identifier`) next to your offset.

    `adopted` is True when outlast did not create the slot and registered it
    the first time it was asked about it (`created_lsn` is then None).
    """

    slot: str
    epoch: str
    system_identifier: str | None
    created_lsn: Lsn | None
    adopted: bool


def quote_ident(name: str, what: str) -> str:
    """A plain identifier (letters, digits, ``_``, ``$``) as a quoted SQL name."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ConfigurationError(f"{what} must be a plain name such as 'cdc', not {name!r}")
    return f'"{name}"'


def quote_table(name: str) -> str:
    """``schema.table`` or ``table`` as a quoted SQL name (plain identifiers only)."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        raise ConfigurationError(
            f"table must be a plain name such as 'outlast_slot_epochs' or 'ops.heartbeat', "
            f"not {name!r}"
        )
    return ".".join(f'"{p}"' for p in parts)


def ensure_table(conn: Any, table: str) -> None:
    """Create the registry table if it does not exist."""
    _rows(
        conn,
        f"CREATE TABLE IF NOT EXISTS {quote_table(table)} ("
        " slot_name text PRIMARY KEY,"
        " epoch text NOT NULL,"
        " created_lsn pg_lsn,"
        " registered_at timestamptz NOT NULL DEFAULT now(),"
        " adopted boolean NOT NULL DEFAULT false)",
    )


def _table_exists(conn: Any, table: str) -> bool:
    ((oid,),) = _rows(conn, "SELECT to_regclass(%s)::text", (quote_table(table),))
    return oid is not None


def create_slot_sql(*, temporary: bool, two_phase: bool, version_num: int) -> str:
    """The ``pg_create_logical_replication_slot`` call for the server's version."""
    args = ["%s", "%s", "%s"]
    if version_num >= 140000:
        args.append("%s")
    return f"SELECT lsn::text FROM pg_create_logical_replication_slot({', '.join(args)})"


def register(
    conn: Any, table: str, slot: str, *, created_lsn: Lsn | None, adopted: bool
) -> tuple[str, Lsn | None, bool]:
    """Register a new epoch for `slot` (replacing any) or, when adopting, keep an existing one."""
    ensure_table(conn, table)
    epoch = uuid.uuid4().hex
    if adopted:
        _rows(
            conn,
            f"INSERT INTO {quote_table(table)} (slot_name, epoch, created_lsn, adopted)"
            " VALUES (%s, %s, NULL, true) ON CONFLICT (slot_name) DO NOTHING",
            (slot, epoch),
        )
    else:
        _rows(
            conn,
            f"INSERT INTO {quote_table(table)} (slot_name, epoch, created_lsn, adopted)"
            " VALUES (%s, %s, %s::pg_lsn, false) ON CONFLICT (slot_name) DO UPDATE"
            " SET epoch = excluded.epoch, created_lsn = excluded.created_lsn,"
            " registered_at = now(), adopted = false",
            (slot, epoch, None if created_lsn is None else str(created_lsn)),
        )
    found = read_epoch(conn, table, slot)
    assert found is not None  # just written (a concurrent drop_slot could race; see docs)
    return found


def read_epoch(conn: Any, table: str, slot: str) -> tuple[str, Lsn | None, bool] | None:
    """``(epoch, created_lsn, adopted)`` registered for `slot`, or None."""
    if not _table_exists(conn, table):
        return None
    rows = _rows(
        conn,
        f"SELECT epoch, created_lsn::text, adopted FROM {quote_table(table)} WHERE slot_name = %s",
        (slot,),
    )
    if not rows:
        return None
    epoch, created, adopted = rows[0]
    return epoch, None if created is None else Lsn(created), bool(adopted)


def retire(conn: Any, table: str, slot: str) -> None:
    """Forget `slot`'s epoch (it was dropped)."""
    if _table_exists(conn, table):
        _rows(conn, f"DELETE FROM {quote_table(table)} WHERE slot_name = %s", (slot,))


def retire_missing(conn: Any, table: str) -> list[tuple[str, str]]:
    """Retire the epoch of every registered slot that no longer exists; returns ``(slot, epoch)``.

    The existence test runs inside the DELETE, against the live slot list, so
    a slot created (and registered) while this runs is never retired.
    """
    if not _table_exists(conn, table):
        return []
    q = quote_table(table)
    rows = _rows(
        conn,
        f"DELETE FROM {q} e WHERE NOT EXISTS"
        " (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = e.slot_name)"
        " RETURNING e.slot_name, e.epoch",
    )
    return [(str(name), str(epoch)) for name, epoch in rows]
