"""`Heartbeat`: small writes that keep a slot moving on an idle database.

A logical slot only advances when its consumer acknowledges a change it
received. On a database where nothing the publication covers changes, the
consumer receives nothing, acknowledges nothing, and the slot holds every
byte of WAL the *server* writes (other databases, vacuum, checkpoints) until
the disk is full. Debezium's answer is ``heartbeat.action.query`` (its
``heartbeat.interval.ms`` defaults to 0: off). Ours::

    from outlast.replication import Heartbeat

    beat = Heartbeat("host=db dbname=app", publication="cdc", every=10)
    beat.start(supervisor)      # a supervised loop that rides out outages

Each beat upserts one row of a heartbeat table (created if missing and added
to `publication` unless it already publishes it, e.g. ``FOR ALL TABLES``).
The consumer sees a change, acknowledges it, and the slot advances. With
``mode="message"`` a beat is ``pg_logical_emit_message()`` instead: no table,
but only consumers that receive logical messages (``test_decoding``,
``wal2json``, ``pgoutput`` with ``messages 'true'``) acknowledge it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Any, Literal

import outlast
from outlast import ConfigurationError, Hardening
from outlast.supervise import Loop, Supervisor

from ._connect import Connection, Driver, Source
from ._connect import rows as _rows
from ._epochs import quote_ident, quote_table

__all__ = ["Heartbeat"]

logger = logging.getLogger("outlast")

Mode = Literal["table", "message"]


class Heartbeat:
    """Writes a heartbeat every `every` seconds so idle slots advance (see the module doc).

    `name` is the row this writer updates (one row per writer). `create`:
    create the table and add it to `publication` when missing (needs the
    rights to; otherwise prepare them once yourself and pass False).
    """

    def __init__(
        self,
        source: Source,
        *,
        publication: str | None = None,
        table: str = "outlast_heartbeat",
        name: str = "outlast",
        every: float | datetime.timedelta = 10.0,
        mode: Mode = "table",
        create: bool = True,
        guard: outlast.Guard | None = None,
        preset: str | Hardening = "default",
        driver: Driver = "auto",
    ) -> None:
        if mode not in ("table", "message"):
            raise ConfigurationError(f"mode must be 'table' or 'message', not {mode!r}")
        self._table_sql = quote_table(table)
        self._publication_sql = (
            None if publication is None else quote_ident(publication, "publication")
        )
        if mode == "message" and publication is not None:
            raise ConfigurationError("publication is for mode='table' (messages are not published)")
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name must be a non-empty string")
        self.table = table
        self.publication = publication
        self.name = name
        self.mode: Mode = mode
        self.create = create
        self.guard = guard if guard is not None else outlast.Guard("replication")
        self._loop: Loop[None] = outlast.loop(
            every=every, guard=self.guard, name=f"heartbeat:{name}"
        )(self._tick)
        self.every = self._loop.every
        self._conn = Connection(source, preset=preset, driver=driver)
        self._prepared = False
        self._lock = threading.Lock()
        self.beats = 0
        self.last_beat_at: float | None = None

    # -- setup --------------------------------------------------------------------

    def _prepare(self, conn: Any) -> None:
        if self._prepared or self.mode == "message" or not self.create:
            self._prepared = True
            return
        _rows(
            conn,
            f"CREATE TABLE IF NOT EXISTS {self._table_sql} ("
            " id text PRIMARY KEY,"
            " beat_at timestamptz NOT NULL DEFAULT now(),"
            " beats bigint NOT NULL DEFAULT 1)",
        )
        if self.publication is not None:
            rows = _rows(
                conn,
                "SELECT p.puballtables, EXISTS (SELECT 1 FROM pg_publication_rel r"
                " WHERE r.prpubid = p.oid AND r.prrelid = to_regclass(%s))"
                " FROM pg_publication p WHERE p.pubname = %s",
                (self._table_sql, self.publication),
            )
            if not rows:
                raise ConfigurationError(f"publication {self.publication!r} does not exist")
            all_tables, member = rows[0]
            if not all_tables and not member:
                _rows(
                    conn,
                    f"ALTER PUBLICATION {self._publication_sql} ADD TABLE {self._table_sql}",
                )
                logger.info(
                    "[HEARTBEAT] added %s to publication %s",
                    self.table,
                    self.publication,
                    extra={"outlast_event": "heartbeat_published", "table": self.table},
                )
        self._prepared = True

    def ensure(self) -> None:
        """Create the table and publish it now (otherwise done by the first beat)."""
        self.guard.call(lambda: self._conn.run(self._prepare), idempotent=True, op="heartbeat")

    # -- beating ------------------------------------------------------------------

    def _write(self, conn: Any) -> None:
        self._prepare(conn)
        if self.mode == "message":
            _rows(
                conn,
                # Transactional: its commit flushes the WAL (a non-transactional
                # message could wait in WAL buffers, undecodable, until
                # something else flushes them).
                "SELECT pg_logical_emit_message(true, 'outlast.heartbeat', %s)",
                (self.name,),
            )
        else:
            _rows(
                conn,
                f"INSERT INTO {self._table_sql} AS h (id, beat_at, beats) VALUES (%s, now(), 1)"
                " ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at, beats = h.beats + 1",
                (self.name,),
            )
        with self._lock:
            self.beats += 1
            self.last_beat_at = time.time()

    def beat(self) -> None:
        """Write one heartbeat now, through the Guard."""
        self.guard.call(
            lambda: self._conn.run(self._write), idempotent=True, op=f"heartbeat:{self.name}"
        )

    def _tick(self) -> None:
        # A loop tick: the loop reports to the Guard and backs off by itself.
        self._conn.run(self._write)

    # -- running ------------------------------------------------------------------

    @property
    def loop(self) -> Loop[None]:
        """The periodic `outlast.supervise.Loop` that beats every `every` seconds."""
        return self._loop

    def start(self, supervisor: Supervisor) -> None:
        """Beat in a thread of `supervisor` (restarted if it crashes)."""
        self._loop.start(supervisor)

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Beat in the calling thread until `stop_event` is set."""
        self._loop.run_forever(stop_event)

    def close(self) -> None:
        """Close the heartbeat's connection."""
        self._conn.close()

    def __repr__(self) -> str:
        return f"<Heartbeat {self.name!r} {self.mode} every={self.every}s>"
