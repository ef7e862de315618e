"""A psycopg2 connection pool that does not leak, hang or hand out dead connections.

psycopg2's own ``ThreadedConnectionPool`` raises ``PoolError`` at once when it
is exhausted, keeps a slot for every connection returned broken, never checks
a connection before handing it out, and has no timeouts. This one:

- waits up to ``timeout`` seconds for a free slot (then raises
  `PoolTimeout`, a ``psycopg2.pool.PoolError``);
- on `getconn`, pings an idle connection under a socket deadline of
  ``ping_timeout`` and replaces it when it is dead; after a restart-class
  fault it drops every idle connection (they are all as stale);
- on `putconn`, discards a closed or broken connection and frees its slot,
  and rolls back a connection left inside a transaction;
- retires connections after a jittered ``max_lifetime``;
- `connection()` is a context manager that always gives the connection back;
- connects with the preset's libpq parameters and session ``SET``;
- reports every fault to the Guard.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from outlast._classify import classify
from outlast._dsn import parse_dsn
from outlast._errors import ConfigurationError
from outlast._hardening import (
    FaultReporter,
    Hardening,
    check_startup_options,
    is_restart_fault,
    jittered_lifetime,
    libpq_params,
    preset_for,
    session_setup_sql,
    socket_deadline,
    without_settings,
)

__all__ = ["ConnectionPool", "PoolTimeout", "connect", "connect_kwargs"]

Connection = psycopg2.extensions.connection


class PoolTimeout(psycopg2.pool.PoolError):
    """No connection became free within the pool's ``timeout``."""


def connect_kwargs(
    dsn: str = "", *, preset: str | Hardening = "default", kwargs: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Hardening]:
    """libpq keywords for `psycopg2.connect` (caller's values win) and the effective preset."""
    given = parse_dsn(dsn) if dsn else {}
    hardening = preset_for(dsn or None, preset)
    out = dict(kwargs or {})
    user_options = out.get("options", given.get("options"))
    hardening = without_settings(hardening, check_startup_options(user_options, hardening))
    for key, value in libpq_params(hardening).items():
        if key == "options" and user_options:
            out["options"] = f"{user_options} {value}"
        elif key not in out and key not in given:
            out[key] = value
    return out, hardening


def connect(
    dsn: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> Connection:
    """`psycopg2.connect` with the preset's hardening (and its session ``SET``)."""
    params, hardening = connect_kwargs(dsn, preset=preset, kwargs=kwargs)
    return _connect(dsn, params, session_setup_sql(hardening), guard)


def _connect(
    dsn: str, params: dict[str, Any], statements: list[str], guard: FaultReporter | None
) -> Connection:
    if guard is not None:
        guard.check()
    try:
        conn: Connection = psycopg2.connect(dsn, **params)
        if statements:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
            conn.commit()  # a SET in a transaction that is rolled back is undone
    except psycopg2.Error as error:
        if guard is not None:
            guard.record_failure(error, op="connect")
        raise
    if guard is not None:
        guard.record_success(op="connect")
    return conn


def _usable(conn: Connection) -> bool:
    # `closed` is 0 while open, 1 after close(), 2 when libpq saw the link die.
    return not conn.closed


class ConnectionPool:
    """A thread-safe psycopg2 pool of at most `max_size` connections.

    ``pool = ConnectionPool(dsn, guard=db, max_size=10)``;
    ``with pool.connection() as conn: ...``.
    """

    def __init__(
        self,
        dsn: str = "",
        *,
        guard: FaultReporter | None = None,
        preset: str | Hardening = "default",
        min_size: int = 0,
        max_size: int = 10,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
            raise ConfigurationError(f"min_size must be a whole number >= 0, not {min_size!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ConfigurationError(f"max_size must be a whole number >= 1, not {max_size!r}")
        if min_size > max_size:
            raise ConfigurationError("min_size must not exceed max_size")
        self._dsn = dsn
        self._params, self.hardening = connect_kwargs(dsn, preset=preset, kwargs=kwargs)
        if timeout is not None:
            self.hardening = self.hardening.replace(pool_timeout=timeout)
        self._statements = session_setup_sql(self.hardening)
        # Read by Guard.transaction to open a direct probe connection.
        self._args: tuple[Any, ...] = (dsn,)
        self._kwargs: dict[str, Any] = dict(self._params)
        self.guard = guard
        self.min_size = min_size
        self.max_size = max_size
        self._cond = threading.Condition()
        self._idle: collections.deque[Connection] = collections.deque()
        self._expires: dict[int, float] = {}  # id(conn) -> monotonic expiry
        self._used: set[int] = set()  # ids of connections handed out
        self._size = 0  # connections open or being opened
        self._closed = False
        for _ in range(min_size):
            self._idle.append(self._new())
            self._size += 1

    # -- public API ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Connections open (idle or in use) or being opened."""
        with self._cond:
            return self._size

    @property
    def idle(self) -> int:
        with self._cond:
            return len(self._idle)

    def getconn(self, timeout: float | None = None) -> Connection:
        """A live connection; waits up to `timeout` (default: the pool's) for a slot."""
        wait = self.hardening.pool_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            conn = self._take(deadline, wait)
            if conn is None:  # a free slot: open a new connection in it
                try:
                    conn = self._new()
                except BaseException:
                    self._release_slot()
                    raise
                return self._hand_out(conn)
            if self._healthy(conn):
                return self._hand_out(conn)
            self._discard(conn)

    def putconn(self, conn: Connection, *, close: bool = False) -> None:
        """Give a connection back. A closed or broken one is dropped and its slot freed."""
        with self._cond:
            if id(conn) not in self._used:
                raise psycopg2.pool.PoolError("connection not taken from this pool")
            self._used.discard(id(conn))
        keep = not close and not self._closed and _usable(conn)
        if keep and conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            try:
                conn.rollback()  # a transaction left open must not leak into the next user
            except psycopg2.Error as error:
                self._report(error, "rollback")
                keep = False
            keep = keep and _usable(conn)
        if not keep:
            self._discard(conn)
            return
        with self._cond:
            self._idle.append(conn)
            self._cond.notify()

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """``with pool.connection() as conn:``: commit on success, roll back on error."""
        conn = self.getconn(timeout)
        try:
            yield conn
            if _usable(conn) and (
                conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
            ):
                conn.commit()
        except BaseException as error:
            if isinstance(error, psycopg2.Error):
                self._report(error, "execute")
            with contextlib.suppress(psycopg2.Error):
                if _usable(conn):
                    conn.rollback()
            raise
        finally:
            self.putconn(conn)

    def drain(self) -> int:
        """Close every idle connection (after a restart they are all stale); returns how many."""
        with self._cond:
            conns = list(self._idle)
            self._idle.clear()
        for conn in conns:
            self._discard(conn)
        return len(conns)

    def close(self) -> None:
        """Close idle connections now and the others when they are given back."""
        with self._cond:
            self._closed = True
        self.drain()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _new(self) -> Connection:
        conn = _connect(self._dsn, self._params, self._statements, self.guard)
        with self._cond:
            self._expires[id(conn)] = time.monotonic() + jittered_lifetime(self.hardening)
        return conn

    def _take(self, deadline: float, wait: float) -> Connection | None:
        """An idle connection, or None after reserving a slot for a new one."""
        with self._cond:
            while True:
                if self._closed:
                    raise psycopg2.pool.PoolError("connection pool is closed")
                if self._idle:
                    return self._idle.pop()  # LIFO: the most recently used is warmest
                if self._size < self.max_size:
                    self._size += 1
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"no connection free after {wait:.1f} s "
                        f"(pool of {self.max_size}; all in use)"
                    )
                self._cond.wait(remaining)

    def _hand_out(self, conn: Connection) -> Connection:
        with self._cond:
            self._used.add(id(conn))
        return conn

    def _healthy(self, conn: Connection) -> bool:
        if not _usable(conn):
            return False
        if time.monotonic() >= self._expires.get(id(conn), 0.0):
            return False
        token = socket_deadline.arm(conn.fileno(), self.hardening.ping_timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
        except psycopg2.Error as error:
            if self._report(error, "ping"):
                self.drain()
            return False
        finally:
            socket_deadline.disarm(token)
        if self.guard is not None:
            self.guard.record_success(op="ping")
        return True

    def _report(self, error: BaseException, op: str) -> bool:
        fault = self.guard.record_failure(error, op=op) if self.guard else classify(error)
        return fault is None or is_restart_fault(fault)

    def _discard(self, conn: Connection) -> None:
        with contextlib.suppress(Exception):
            conn.close()
        with self._cond:
            self._expires.pop(id(conn), None)
        self._release_slot()

    def _release_slot(self) -> None:
        with self._cond:
            self._size -= 1
            self._cond.notify()
