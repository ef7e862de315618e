"""The default lock: a session advisory lock on a dedicated direct connection.

Why each choice (the tools users complain about made the opposite one):

- **Polling** ``pg_try_advisory_lock`` against a client-side deadline, never a
  blocking ``pg_advisory_lock``: a blocked call dies on the role's
  ``statement_timeout`` (the seed's crash), cannot be cancelled cleanly
  (golang-migrate#269), and its open statement holds a snapshot that a
  ``CREATE INDEX CONCURRENTLY`` run by the holder waits for — a deadlock the
  server cannot see (flyway#1654).
- **A session lock on its own connection**, with the DDL on another one: it
  survives the migrations' own COMMITs and ROLLBACKs and is released, and the
  release checked, on the connection that took it (the seed took and
  released its lock on different pooled connections).
- **Session settings that free a dead holder's lock in seconds**: TCP
  keepalives and ``tcp_user_timeout`` on the *server* side of this session
  (the server notices a vanished host in about a lease, not after the
  kernel's two hours), and ``idle_session_timeout`` equal to the lease while
  the holder's heartbeat runs every quarter lease — a holder that stops
  talking (a frozen process, a link that drops everything) loses its session
  even where TCP still answers (a proxy, a NAT).
- **No pooler**: settings that do not stick (PgBouncer in transaction mode
  drops or refuses startup ``options``) mean a pooler is in between, where a
  session lock would stay on a random server connection; refused with
  `LockNotSupported`.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import TYPE_CHECKING, Any

from outlast import Hardening, parse_dsn, preset_for

from ._errors import LockNotSupported
from ._holder import Holder, leader_name
from ._session import LockSession

if TYPE_CHECKING:
    import psycopg

__all__ = ["LOCK_CLASS", "AdvisoryLock", "advisory_key"]

logger = logging.getLogger("outlast.migrate")

# The first half of the two-int4 advisory key: "outl" in ASCII, so the lock is
# recognisable in pg_locks (classid = 1869968492, objsubid = 2) and does not
# collide with hand-written single-bigint keys (objsubid = 1).
LOCK_CLASS = 0x6F75746C

_OPTIONAL_SETTINGS = (
    "idle_session_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
    "tcp_user_timeout",
)


def advisory_key(name: str) -> tuple[int, int]:
    """The ``(classid, objid)`` int4 pair of the lock called `name`."""
    crc = zlib.crc32(f"outlast.migrate:{name}".encode())
    return LOCK_CLASS, crc - (1 << 32) if crc >= 1 << 31 else crc


def _unsigned(value: int) -> int:
    return value & 0xFFFFFFFF


class AdvisoryLock(LockSession):
    """``pg_try_advisory_lock(classid, objid)`` held by a dedicated direct session."""

    mode = "advisory"

    def __init__(self, dsn: str, settings: Any, *, holder: str, key_id: str) -> None:
        super().__init__(dsn, settings, holder=holder, key_id=key_id)
        self.key = advisory_key(settings.name)
        self._skip_optional = False

    # ------------------------------------------------------------ connection

    def server_settings(self) -> dict[str, str]:
        """What the lock session asks the server for (milliseconds, seconds, counts)."""
        lease = self.settings.lease
        settings = {"statement_timeout": "0", "lock_timeout": "0"}
        if not self._skip_optional:
            settings.update(
                idle_session_timeout=str(round(lease * 1000)),
                tcp_keepalives_idle=str(max(1, round(lease / 4))),
                tcp_keepalives_interval=str(max(1, round(lease / 8))),
                tcp_keepalives_count="3",
                tcp_user_timeout=str(round(lease * 1000)),
            )
        return settings

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        from outlast.psycopg import connect

        if self.settings.role == "wait":
            # A waiting process never takes the lock: it only reads the
            # schema's state, which works through a pooler too.
            return self.plain_connect()
        if not preset_for(self.dsn).startup_options:
            raise LockNotSupported(
                "the lock DSN names a connection pooler endpoint (a '-pooler' host), where a"
                " session advisory lock cannot be held: give a direct endpoint as the lock"
                " DSN (lock_dsn= / --lock-dsn), or use lock='lease' in every process"
            )
        lease = self.settings.lease
        preset = Hardening(
            name="migrate-lock",
            connect_timeout=self.settings.connect_timeout,
            keepalives_idle=max(1, round(lease / 4)),
            keepalives_interval=max(1, round(lease / 8)),
            keepalives_count=3,
            tcp_user_timeout=lease,
            statement_timeout=None,  # in `options` below, with the rest
            idle_in_transaction_session_timeout=None,
            application_name=self.tag,
            prepared_statements=False,
        )
        given = parse_dsn(self.dsn).get("options")
        while True:
            options = " ".join(f"-c {k}={v}" for k, v in self.server_settings().items())
            try:
                conn = connect(
                    self.dsn,
                    preset=preset,
                    autocommit=True,
                    application_name=self.tag,
                    options=f"{given} {options}" if given else options,
                )
            except psycopg.OperationalError as exc:
                text = str(exc)
                if "unsupported startup parameter" in text:
                    raise LockNotSupported(
                        "the lock DSN goes through a connection pooler (it refused the"
                        " session's startup options): a session advisory lock would stay on"
                        " whichever server connection ran it; give a direct endpoint as the"
                        " lock DSN (lock_dsn= / --lock-dsn), or use lock='lease' in every"
                        " process"
                    ) from None
                if not self._skip_optional and any(name in text for name in _OPTIONAL_SETTINGS):
                    # PostgreSQL < 14 has no idle_session_timeout; some platforms
                    # lack TCP_USER_TIMEOUT. The heartbeat still fences the holder.
                    logger.warning(
                        "[MIGRATION] server refused keepalive/idle settings on the lock"
                        " session; a dead holder's lock then lasts until TCP notices"
                    )
                    self._skip_optional = True
                    continue
                raise
            break
        try:
            self._verify(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _verify(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(
            "SELECT pg_backend_pid(), current_setting('server_version_num')::int,"
            " (SELECT setting FROM pg_settings WHERE name = 'statement_timeout'),"
            " (SELECT setting FROM pg_settings WHERE name = 'idle_session_timeout')"
        ).fetchone()
        assert row is not None
        pid, version, statement_timeout, idle_session = row
        wanted = self.server_settings()
        dropped = statement_timeout != "0" or (
            "idle_session_timeout" in wanted and idle_session != wanted["idle_session_timeout"]
        )
        if dropped:
            raise LockNotSupported(
                "the lock DSN goes through a connection pooler (the session's settings did not"
                " stick): a session advisory lock would stay on whichever server connection"
                " ran it; give a direct endpoint as the lock DSN (lock_dsn= / --lock-dsn), or"
                " use lock='lease' in every process"
            )
        self.backend_pid = int(pid)
        self.server_version = int(version)

    # ------------------------------------------------------------ the lock

    def try_acquire(self) -> bool:
        rows, _ = self.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4)", self.key)
        if not rows or rows[0][0] is not True:
            return False
        # Operators (and waiters) see who leads and since when in pg_stat_activity.
        try:
            self.execute(
                "SELECT set_config('application_name', %s, false)",
                (leader_name(self.holder_id, time.time()),),
            )
        except Exception:
            # We hold the lock but the session is in trouble: let go of both.
            self._drop_quietly()
            raise
        return True

    def holder(self) -> Holder | None:
        rows, _ = self.execute(
            "SELECT a.pid, a.application_name, host(a.client_addr), a.client_port,"
            " a.backend_start"
            " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid::int8 = %s AND l.objid::int8 = %s",
            (_unsigned(self.key[0]), _unsigned(self.key[1])),
        )
        if not rows:
            return None
        return Holder.from_row(*rows[0])

    def still_held(self) -> bool:
        rows, _ = self.execute(
            "SELECT pg_backend_pid(), EXISTS (SELECT 1 FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
            " AND objsubid = 2 AND classid::int8 = %s AND objid::int8 = %s)",
            (_unsigned(self.key[0]), _unsigned(self.key[1])),
        )
        if not rows:
            return False
        pid, held = rows[0]
        # Another backend pid means a pooler moved us: the lock is not ours.
        return bool(held) and (self.backend_pid is None or pid == self.backend_pid)

    def release_lock(self) -> bool:
        rows, _ = self.execute("SELECT pg_advisory_unlock(%s::int4, %s::int4)", self.key)
        released = bool(rows and rows[0][0] is True)
        if released:
            self.execute("SELECT set_config('application_name', %s, false)", (self.tag,))
        return released
