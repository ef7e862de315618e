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
- connects with the preset's libpq parameters and session ``SET``, retrying a
  login refused while a compute wakes up where the preset asks for it
  (``neon``); psycopg2 never prepares statements server-side, so pooler
  presets need nothing more;
- hands out `HardenedConnection` objects: every statement, fetch from a named
  cursor, ``COPY``, commit and rollback runs under a socket deadline (the
  preset's statement deadline, or the web request's remaining budget when
  that is less), so a query on a link that accepts bytes but never answers
  fails instead of hanging; the dead connection is then dropped by the pool;
- reports every fault to the Guard, and drops every idle connection after a
  fault that shows the server restarted or the link died.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from outlast._core.connections.connect_retry import retry_connect
from outlast._core.connections.dsn import parse_dsn
from outlast._core.connections.hardening import (
    FaultReporter,
    Hardening,
    jittered_lifetime,
    libpq_connect_kwargs,
    preset_for,
    report_fault,
    session_setup_sql,
)
from outlast._core.connections.pools import PoolStats, register_pool
from outlast._core.connections.socket_deadline import socket_deadline
from outlast._core.connections.statements import statement_bound
from outlast._core.faults.errors import ConfigurationError

__all__ = ["ConnectionPool", "HardenedConnection", "PoolTimeout", "connect", "connect_kwargs"]

Connection = psycopg2.extensions.connection


class PoolTimeout(psycopg2.pool.PoolError):
    """No connection became free within the pool's ``timeout``."""


def connect_kwargs(
    dsn: str = "", *, preset: str | Hardening = "default", kwargs: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Hardening]:
    """libpq keywords for `psycopg2.connect` (caller's values win) and the effective preset."""
    given = parse_dsn(dsn) if dsn else {}
    return libpq_connect_kwargs(preset_for(dsn or None, preset), given, kwargs)


class _Hooks:
    """What a hardened connection needs: its preset, its Guard and, in a pool, the pool."""

    __slots__ = ("guard", "pool", "preset", "timed")

    def __init__(
        self, preset: Hardening, guard: FaultReporter | None, pool: ConnectionPool | None
    ) -> None:
        self.preset = preset
        self.guard = guard
        self.timed = (getattr(guard, "name", None), "psycopg2")  # operation-duration labels
        self.pool = weakref.ref(pool) if pool is not None else None


class HardenedConnection(psycopg2.extensions.connection):
    """A psycopg2 connection whose exchanges with the server run under a socket deadline.

    Its cursors (of any ``cursor_factory``) arm `outlast.SocketDeadline` around
    ``execute``, ``executemany``, ``callproc``, ``copy_*`` and, for named
    (server-side) cursors, ``fetch*``; ``commit`` and ``rollback`` too. A
    failure on the link is reported to the Guard.
    """

    _outlast: _Hooks | None = None

    def cursor(
        self,
        name: str | bytes | None = None,
        cursor_factory: Any = None,
        withhold: bool = False,
        scrollable: bool | None = None,
    ) -> Any:
        default: Any = self.cursor_factory  # None unless set on the connection
        factory = cursor_factory or default or psycopg2.extensions.cursor
        return super().cursor(
            name,
            cursor_factory=_bounded_cursor(factory),
            withhold=withhold,
            scrollable=scrollable,
        )

    def commit(self) -> None:
        with self.bounded("commit"):
            super().commit()

    def rollback(self) -> None:
        with self.bounded("rollback"):
            super().rollback()

    @contextlib.contextmanager
    def bounded(self, op: str) -> Iterator[None]:
        """Run a blocking exchange under the statement deadline; report its failure."""
        hooks = self._outlast
        if hooks is None or self.closed:
            yield
            return
        try:
            with statement_bound(self.fileno(), hooks.preset, hooks.timed):
                yield
        except psycopg2.Error as error:
            if report_fault(hooks.guard, error, op):
                pool = hooks.pool() if hooks.pool is not None else None
                if pool is not None:
                    pool.drain()  # every idle connection is as stale as this one
            raise


class BoundedCursor(psycopg2.extensions.cursor):
    """A cursor of a `HardenedConnection` (mixed into the caller's cursor class)."""

    def _bounded(self, op: str) -> contextlib.AbstractContextManager[None]:
        conn = self.connection
        if isinstance(conn, HardenedConnection):
            return conn.bounded(op)
        return contextlib.nullcontext()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        with self._bounded("execute"):
            return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        with self._bounded("execute"):
            return super().executemany(*args, **kwargs)

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        with self._bounded("execute"):
            return super().callproc(*args, **kwargs)

    def copy_expert(self, *args: Any, **kwargs: Any) -> Any:
        with self._bounded("copy"):
            return super().copy_expert(*args, **kwargs)

    def copy_from(self, *args: Any, **kwargs: Any) -> Any:
        with self._bounded("copy"):
            return super().copy_from(*args, **kwargs)

    def copy_to(self, *args: Any, **kwargs: Any) -> Any:
        with self._bounded("copy"):
            return super().copy_to(*args, **kwargs)

    # A client-side cursor's rows are already here; a named one fetches them.

    def fetchone(self) -> Any:
        if self.name is None:
            return super().fetchone()
        with self._bounded("fetch"):
            return super().fetchone()

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        if self.name is None:
            return super().fetchmany(*args, **kwargs)
        with self._bounded("fetch"):
            return super().fetchmany(*args, **kwargs)

    def fetchall(self) -> Any:
        if self.name is None:
            return super().fetchall()
        with self._bounded("fetch"):
            return super().fetchall()


@functools.cache
def _bounded_cursor(factory: Any) -> Any:
    """`factory` (a cursor class) with `BoundedCursor`'s deadlines mixed in."""
    if not isinstance(factory, type) or not issubclass(factory, psycopg2.extensions.cursor):
        return factory  # a callable: psycopg2 calls it as given
    if issubclass(factory, BoundedCursor):
        return factory
    return type(f"Bounded{factory.__name__}", (BoundedCursor, factory), {})


@functools.cache
def _hardened_factory(factory: Any) -> Any:
    """A caller's ``connection_factory`` with `HardenedConnection` mixed in."""
    if factory is None:
        return HardenedConnection
    if not isinstance(factory, type) or not issubclass(factory, psycopg2.extensions.connection):
        return factory
    if issubclass(factory, HardenedConnection):
        return factory
    return type(f"Hardened{factory.__name__}", (HardenedConnection, factory), {})


def connect(
    dsn: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> Connection:
    """`psycopg2.connect` with the preset's hardening (and its session ``SET``)."""
    params, hardening = connect_kwargs(dsn, preset=preset, kwargs=kwargs)
    return _connect(dsn, params, hardening, guard)


def _connect(
    dsn: str,
    params: dict[str, Any],
    hardening: Hardening,
    guard: FaultReporter | None,
    pool: ConnectionPool | None = None,
) -> Connection:
    if guard is not None:
        guard.check()
    statements = session_setup_sql(hardening)
    params = dict(params)
    params["connection_factory"] = _hardened_factory(params.get("connection_factory"))
    try:
        conn: Connection = retry_connect(
            hardening,
            lambda: psycopg2.connect(dsn, **params),
            classifier=guard.classify if guard is not None else None,
        )
        if isinstance(conn, HardenedConnection):
            conn._outlast = _Hooks(hardening, guard, pool)
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


def _stats(pool: ConnectionPool) -> PoolStats:
    return pool._stats()


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
        self._waiting = 0  # getconn calls waiting for a slot now
        self._timeouts = 0  # getconn calls that gave up (total)
        self._waited = 0.0  # seconds spent waiting for a slot (total)
        register_pool(self, driver="psycopg2", guard=guard, reader=_stats)
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
        """A live connection; waits up to `timeout` (default: the pool's) for a slot.

        Asks the Guard first: while its breaker is open this raises
        `DatabaseUnavailable` at once (and a web request admitted on first use
        is admitted here).
        """
        if self.guard is not None:
            self.guard.check()
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
        conn = _connect(self._dsn, self._params, self.hardening, self.guard, self)
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
                    self._timeouts += 1
                    raise PoolTimeout(
                        f"no connection free after {wait:.1f} s "
                        f"(pool of {self.max_size}; all in use)"
                    )
                self._waiting += 1
                started = time.monotonic()
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
                    self._waited += time.monotonic() - started

    def _stats(self) -> PoolStats:
        with self._cond:
            idle = len(self._idle)
            return PoolStats(
                idle=idle,
                used=self._size - idle,
                max=self.max_size,
                pending=self._waiting,
                timeouts=self._timeouts,
                wait_seconds=self._waited,
            )

    def _hand_out(self, conn: Connection) -> Connection:
        with self._cond:
            self._used.add(id(conn))
        return conn

    def _healthy(self, conn: Connection) -> bool:
        if not _usable(conn):
            return False
        if time.monotonic() >= self._expires.get(id(conn), 0.0):
            return False
        try:
            with socket_deadline.bound(conn.fileno(), self.hardening.ping_timeout):
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                conn.rollback()
        except psycopg2.Error as error:
            if self._report(error, "ping"):
                self.drain()
            return False
        if self.guard is not None:
            self.guard.record_success(op="ping")
        return True

    def _report(self, error: BaseException, op: str) -> bool:
        return report_fault(self.guard, error, op, unknown_is_restart=True)

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
