"""Creating, dropping and identifying slots so that a recreated slot can be told apart.

These go through a Guard like every other call, and keep the epoch registry
(`_epochs`) in step with the slots: `create_slot` registers a fresh epoch,
`drop_slot` retires it, `slot_identity` reads it (adopting a slot outlast did
not create). Store the returned `SlotIdentity`'s ``epoch`` and
``system_identifier`` next to your offset and pass them to `check_offset`.
"""

from __future__ import annotations

from typing import Any

import outlast
from outlast import ConfigurationError, Hardening

from ._connect import Connection, Driver, Source
from ._connect import rows as _rows
from ._epochs import (
    DEFAULT_EPOCH_TABLE,
    SlotIdentity,
    SlotNotFound,
    create_slot_sql,
    quote_table,
    read_epoch,
    register,
    retire,
)
from ._read import read_server
from ._units import Lsn

__all__ = ["create_slot", "drop_slot", "slot_identity"]


def _checked(slot: str, table: str) -> None:
    if not isinstance(slot, str) or not slot:
        raise ConfigurationError("slot must be a slot name")
    quote_table(table)


def _run(
    source: Source,
    fn: Any,
    *,
    guard: outlast.Guard | None,
    preset: str | Hardening,
    driver: Driver,
    op: str,
    idempotent: bool,
) -> Any:
    conn = Connection(source, preset=preset, driver=driver)
    guard = guard if guard is not None else outlast.Guard("replication")
    try:
        return guard.call(lambda: conn.run(fn), idempotent=idempotent, op=op)
    finally:
        conn.close()


def create_slot(
    source: Source,
    slot: str,
    *,
    plugin: str = "pgoutput",
    temporary: bool = False,
    two_phase: bool = False,
    guard: outlast.Guard | None = None,
    preset: str | Hardening = "default",
    driver: Driver = "auto",
    epoch_table: str = DEFAULT_EPOCH_TABLE,
) -> SlotIdentity:
    """Create the logical replication slot `slot` and register a fresh epoch for it.

    Not retried after the statement was sent (creating a slot twice fails);
    a lost connection surfaces as an error to handle like any other.
    """
    _checked(slot, epoch_table)

    def create(conn: Any) -> SlotIdentity:
        server = read_server(conn)
        params: tuple[Any, ...] = (slot, plugin, temporary)
        if server.version_num >= 140000:
            params += (two_phase,)
        elif two_phase:
            raise ConfigurationError("two_phase slots need PostgreSQL 14 or later")
        sql = create_slot_sql(
            temporary=temporary, two_phase=two_phase, version_num=server.version_num
        )
        ((created,),) = _rows(conn, sql, params)
        epoch, created_lsn, adopted = register(
            conn, epoch_table, slot, created_lsn=Lsn(created), adopted=False
        )
        return SlotIdentity(
            slot=slot,
            epoch=epoch,
            system_identifier=server.system_identifier,
            created_lsn=created_lsn,
            adopted=adopted,
        )

    result: SlotIdentity = _run(
        source,
        create,
        guard=guard,
        preset=preset,
        driver=driver,
        op="replication.create_slot",
        idempotent=False,
    )
    return result


def drop_slot(
    source: Source,
    slot: str,
    *,
    missing_ok: bool = False,
    guard: outlast.Guard | None = None,
    preset: str | Hardening = "default",
    driver: Driver = "auto",
    epoch_table: str = DEFAULT_EPOCH_TABLE,
) -> bool:
    """Drop `slot` and retire its epoch; returns False if it did not exist (with `missing_ok`)."""
    _checked(slot, epoch_table)

    def drop(conn: Any) -> bool:
        exists = _rows(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if exists:
            _rows(conn, "SELECT pg_drop_replication_slot(%s)", (slot,))
        retire(conn, epoch_table, slot)
        if not exists and not missing_ok:
            raise SlotNotFound(f"replication slot {slot!r} does not exist")
        return bool(exists)

    result: bool = _run(
        source,
        drop,
        guard=guard,
        preset=preset,
        driver=driver,
        op="replication.drop_slot",
        idempotent=True,
    )
    return result


def slot_identity(
    source: Source,
    slot: str,
    *,
    guard: outlast.Guard | None = None,
    preset: str | Hardening = "default",
    driver: Driver = "auto",
    epoch_table: str = DEFAULT_EPOCH_TABLE,
) -> SlotIdentity:
    """The identity of an existing slot (registering an adopted epoch if it has none).

    Raises `SlotNotFound` when the slot does not exist.
    """
    _checked(slot, epoch_table)

    def identify(conn: Any) -> SlotIdentity:
        server = read_server(conn)
        exists = _rows(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if not exists:
            raise SlotNotFound(f"replication slot {slot!r} does not exist")
        found = read_epoch(conn, epoch_table, slot)
        if found is None:
            found = register(conn, epoch_table, slot, created_lsn=None, adopted=True)
        epoch, created_lsn, adopted = found
        return SlotIdentity(
            slot=slot,
            epoch=epoch,
            system_identifier=server.system_identifier,
            created_lsn=created_lsn,
            adopted=adopted,
        )

    result: SlotIdentity = _run(
        source,
        identify,
        guard=guard,
        preset=preset,
        driver=driver,
        op="replication.slot_identity",
        idempotent=True,
    )
    return result
