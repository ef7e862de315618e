"""The lock session: one dedicated connection per process, never from a pool.

Every process of a deployment opens one of these to read the schema's state
without locks and, when it may migrate, to poll for the migration lock. The
holder keeps it open while it migrates (the DDL runs on a second connection)
and proves it is alive with a heartbeat thread; when the heartbeat fails, the
process has lost the lock and fences itself off (see `LockSession.on_lost`).

Each statement on it is short and bounded on the client side (a deadline that
shuts the socket down, so a frozen link fails in seconds instead of hanging).
No server ``statement_timeout`` or ``lock_timeout`` ever ends a *wait*: waiting
is client-side polling against a deadline.

Two kinds of lock share this class's connection handling and heartbeat:
`outlast.migrate._advisory.AdvisoryLock` (a session advisory lock on a direct
connection) and `outlast.migrate._lease.LeaseLock` (a lease row, for
transaction poolers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import outlast
from outlast import Hardening, classify, parse_dsn
from outlast._core.connections.socket_deadline import socket_deadline

from ._holder import Holder

if TYPE_CHECKING:
    import psycopg

    from ._settings import Settings

__all__ = ["LockSession", "Rows"]

logger = logging.getLogger("outlast.migrate")

Rows = list[tuple[Any, ...]]

# A state check never queues behind the leader's DDL locks for long: it gives
# up and the next poll tries again.
_CHECK_LOCK_TIMEOUT_MS = 2000


def _options(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


class LockSession:
    """A dedicated connection for one process's state checks and migration lock.

    Subclasses implement the lock itself: `try_acquire`, `holder`,
    `still_held`, `release_lock` and the server settings they need.
    """

    mode = "base"

    def __init__(self, dsn: str, settings: Settings, *, holder: str, key_id: str) -> None:
        parse_dsn(dsn)  # ConfigurationError now, naming the problem without the password
        self.dsn = dsn
        self.settings = settings
        self.holder_id = holder
        self.key_id = key_id
        self.tag = f"outlast-migrate {holder}"[:63]
        self.run_tag = f"outlast-migrate run {key_id} {holder}"[:63]
        self.backend_pid: int | None = None
        self.server_version = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._mutex = threading.Lock()
        self._held = False
        self._lost = threading.Event()
        self.lost_reason: str | None = None
        self._stop_beat = threading.Event()
        self._beat: threading.Thread | None = None
        self._on_lost: list[Callable[[], None]] = []

    # ------------------------------------------------------------ connection

    @property
    def statement_deadline(self) -> float:
        """Client-side bound on one statement of this session (half a lease)."""
        return self.settings.lease / 2

    def _connect(self) -> psycopg.Connection[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def plain_connect(self) -> psycopg.Connection[Any]:
        """A connection with no session state at all: fine through a transaction pooler.

        For the lease mode, and for processes that only wait (they read the
        schema's state and never take a lock). Every statement is bounded on
        the client side; keepalives are client-side only.
        """
        from outlast.psycopg import connect

        lease = self.settings.lease
        preset = Hardening(
            name="migrate-plain",
            connect_timeout=self.settings.connect_timeout,
            keepalives_idle=max(1, round(lease / 4)),
            keepalives_interval=max(1, round(lease / 8)),
            keepalives_count=3,
            tcp_user_timeout=lease,
            statement_timeout=None,
            idle_in_transaction_session_timeout=None,
            application_name=self.tag,
            startup_options=False,
            prepared_statements=False,
        )
        conn = connect(self.dsn, preset=preset, autocommit=True, application_name=self.tag)
        try:
            row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        except BaseException:
            conn.close()
            raise
        self.server_version = int(row[0]) if row else 0
        return conn

    def connection(self) -> psycopg.Connection[Any]:
        """The open connection (connecting if needed)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._connect()
            self._conn = conn
        return conn

    def execute(self, sql: Any, params: Sequence[Any] | None = None) -> tuple[Rows, int]:
        """Run one statement under the client-side deadline; (rows, rowcount).

        A connection-level failure closes the connection (the next call
        reconnects) and propagates for the caller to classify.
        """
        with self._mutex:
            conn = self.connection()
            try:
                with socket_deadline.bound(conn.fileno(), self.statement_deadline):
                    cur = conn.execute(sql, params)
                    rows = cur.fetchall() if cur.description else []
                    return rows, cur.rowcount
            except Exception:
                if conn.closed or conn.broken:
                    self._drop()
                raise

    def query(self, sql: Any, params: Sequence[Any] | None = None) -> Rows:
        """A read for a state check: one short transaction with a short ``lock_timeout``.

        The check must never wait behind the leader's DDL (nor keep a snapshot
        that a ``CREATE INDEX CONCURRENTLY`` would wait for).
        """
        with self._mutex:
            conn = self.connection()
            try:
                with (
                    socket_deadline.bound(conn.fileno(), self.statement_deadline),
                    conn.transaction(),
                ):
                    conn.execute(f"SET LOCAL lock_timeout = {_CHECK_LOCK_TIMEOUT_MS}")
                    cur = conn.execute(sql, params)
                    return cur.fetchall() if cur.description else []
            except Exception:
                if conn.closed or conn.broken:
                    self._drop()
                raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.backend_pid = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a broken connection
                logger.debug("closing the lock session failed", exc_info=True)

    def close(self) -> None:
        """Stop the heartbeat and close the connection (a session lock goes with it)."""
        self._stop_heartbeat()
        with self._mutex:
            self._drop()
        self._held = False

    @property
    def connected(self) -> bool:
        """True while the connection is open."""
        return self._conn is not None and not self._conn.closed

    # ------------------------------------------------------------ the lock

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and `release` (even if since lost)."""
        return self._held

    @property
    def lost(self) -> bool:
        """True once the heartbeat found the lock gone while held."""
        return self._lost.is_set()

    def try_acquire(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def holder(self) -> Holder | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def still_held(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def release_lock(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def acquire(self) -> bool:
        """Try the lock once without waiting; on success start the heartbeat."""
        if self._held:
            raise RuntimeError("the migration lock is already held by this session")
        if not self.try_acquire():
            return False
        self._held = True
        self._on_lost.clear()
        self._lost.clear()
        self.lost_reason = None
        self._start_heartbeat()
        return True

    def release(self) -> bool:
        """Release the lock on the session that took it; True when it really was ours.

        False means the lock had been lost before (the heartbeat said so, or
        the release found nothing to release): the caller logs it loudly.
        """
        if not self._held:
            return False
        self._stop_heartbeat()
        self._held = False
        if self._lost.is_set():
            self._drop_quietly()
            return False
        try:
            released = self.release_lock()
        except Exception as exc:
            fault = classify(exc)
            self.lost_reason = fault.reason if fault else type(exc).__name__
            # Closing the session releases a session lock for sure.
            self._drop_quietly()
            return False
        if not released:
            self._drop_quietly()
        return released

    def _drop_quietly(self) -> None:
        with self._mutex:
            self._drop()

    # ------------------------------------------------------------ fencing

    def fence(self) -> list[int]:
        """Terminate DDL sessions left by earlier leaders of this lock (their lock is gone).

        A leader whose lock session died but whose DDL session lives on (a
        frozen host, a killed process whose connection the server has not
        noticed yet) would otherwise keep its locks, or apply a step next to
        the new leader when it thaws. Only sessions tagged
        ``outlast-migrate run <key>`` by another process are touched.
        """
        wait = ", 5000" if self.server_version >= 140000 else ""
        # The filter runs in a subquery and the termination in the select list:
        # a volatile call in WHERE could be evaluated before the other quals.
        sql = (
            f"SELECT pid, pg_terminate_backend(pid{wait}) FROM ("
            " SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name LIKE %s AND application_name <> %s"
            " OFFSET 0) AS orphans"
        )
        pattern = f"outlast-migrate run {self.key_id} %"
        try:
            rows, _ = self.execute(sql, (pattern, self.run_tag))
        except Exception as exc:
            fault = classify(exc)
            if fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE:
                raise
            logger.warning(
                "[MIGRATION] fence_failed reason=%s",
                fault.reason if fault else type(exc).__name__,
                extra={"outlast_event": "migration_fence_failed"},
            )
            return []
        return [int(row[0]) for row in rows if row[1]]

    # ------------------------------------------------------------ heartbeat

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the heartbeat thread) when the held lock is lost."""
        self._on_lost.append(callback)

    def check_held(self) -> None:
        """Raise `MigrationLockLost` if the heartbeat found the lock gone."""
        if self._lost.is_set():
            from ._errors import MigrationLockLost

            raise MigrationLockLost(
                f"the migration lock was lost ({self.lost_reason or 'unknown'});"
                " this process stopped migrating"
            )

    def _start_heartbeat(self) -> None:
        self._stop_beat.clear()
        beat = threading.Thread(
            target=self._heartbeat, name="outlast-migrate-heartbeat", daemon=True
        )
        self._beat = beat
        beat.start()

    def _stop_heartbeat(self) -> None:
        self._stop_beat.set()
        beat, self._beat = self._beat, None
        if beat is not None and beat is not threading.current_thread():
            beat.join(self.statement_deadline + 1.0)

    def _heartbeat(self) -> None:
        interval = self.settings.heartbeat
        while not self._stop_beat.wait(interval):
            reason: str | None = None
            try:
                if not self.still_held():
                    reason = "lock_gone"
            except Exception as exc:
                fault = classify(exc)
                reason = fault.reason if fault else type(exc).__name__
            if self._stop_beat.is_set():
                return
            if reason is None:
                continue
            self._lose(reason)
            return

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self._lost.set()
        logger.error(
            "[MIGRATION] lock_lost holder=%s reason=%s",
            self.holder_id,
            reason,
            extra={"outlast_event": "migration_lock_lost", "reason": reason, "lock": self.mode},
        )
        for callback in list(self._on_lost):
            try:
                callback()
            except Exception:  # the fence must not kill the heartbeat's report
                logger.exception("[MIGRATION] fencing callback failed")
