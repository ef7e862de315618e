"""Hardened psycopg 3 connections and psycopg_pool pools.

The factories return the driver's own objects (`psycopg.Connection`,
`psycopg_pool.ConnectionPool`, ...), configured from a `Hardening` preset:

- connect kwargs: ``connect_timeout``, keepalives, ``tcp_user_timeout``,
  ``application_name`` and, where allowed, the server timeouts as startup
  ``options``; ``prepare_threshold=None`` (no server-side prepared
  statements) for pooler presets; values in the caller's conninfo or
  ``kwargs`` win;
- connect retries where the preset asks for them (``neon``): a login refused
  while a compute wakes up is tried again (`outlast._core.connections.connect_retry`), for
  single connections and inside the pool's own connect;
- the connections are `HardenedConnection` / `AsyncHardenedConnection`
  (subclasses of the caller's ``connection_class``): every network wait of a
  statement, a commit or a rollback runs under a socket deadline (the
  preset's statement deadline, or the web request's remaining budget when
  that is less), so a query on a link that accepts bytes but never answers
  fails instead of hanging; a failure on the link is reported to the Guard
  and, when it means the server restarted or the link died, drains the pool;
- ``configure``: ``SET`` the server timeouts where startup options are not
  allowed (poolers), then the caller's own ``configure``;
- ``check``: an empty query under a socket deadline of ``ping_timeout``
  (psycopg_pool's own check has no timeout). A check that shows the server
  restarted drains the pool, so no later request meets a stale connection;
- ``max_lifetime`` (psycopg_pool jitters it by up to 5 % per connection),
  ``timeout`` (checkout) from the preset, and a ``reconnect_timeout`` that
  keeps psycopg_pool's doubling reconnect delay from growing past ~30 s;
- every fault and recovery is reported to the Guard.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator
from typing import Any, Self, cast

import psycopg
import psycopg_pool
from psycopg.abc import RV, PQGen
from psycopg.rows import Row

from outlast._core.connections.connect_retry import Classifier, aretry_connect, retry_connect
from outlast._core.connections.dsn import parse_dsn
from outlast._core.connections.hardening import (
    FaultReporter,
    Hardening,
    libpq_connect_kwargs,
    preset_for,
    report_fault,
    session_setup_sql,
)
from outlast._core.connections.pools import PoolStats, register_pool
from outlast._core.connections.socket_deadline import socket_deadline
from outlast._core.connections.statements import statement_bound
from outlast._core.guard.first_use import reaching

__all__ = [
    "AsyncConnectionPool",
    "AsyncHardenedConnection",
    "ConnectionPool",
    "HardenedConnection",
    "aconnect",
    "connect",
    "connect_kwargs",
]

# psycopg_pool doubles its reconnect delay until reconnect_timeout, then gives
# up and starts again at 1 s: this bounds how late it notices a recovery.
RECONNECT_TIMEOUT = 60.0

_Pool = psycopg_pool.ConnectionPool[Any] | psycopg_pool.AsyncConnectionPool[Any]


def connect_kwargs(
    conninfo: str = "",
    *,
    preset: str | Hardening = "default",
    kwargs: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Hardening]:
    """The connection keywords for a conninfo and a preset, and the effective preset.

    Keys already in `conninfo` or `kwargs` are left to the caller. Raises
    `outlast.ConfigurationError` for a malformed conninfo or startup options a
    pooler would reject (never echoing the password).
    """
    given = parse_dsn(conninfo) if conninfo else {}
    params, hardening = libpq_connect_kwargs(preset_for(conninfo or None, preset), given, kwargs)
    if not hardening.prepared_statements:
        # psycopg prepares a query server-side after 5 runs; behind a
        # transaction pooler the next run may land on a server connection
        # that never saw it.
        params.setdefault("prepare_threshold", None)
    return params, hardening


class _Hooks:
    """What a hardened connection needs: its preset, its Guard and, in a pool, the pool."""

    __slots__ = ("guard", "pool", "preset", "timed")

    def __init__(self, preset: Hardening, guard: FaultReporter | None) -> None:
        self.preset = preset
        self.guard = guard
        self.timed = (getattr(guard, "name", None), "psycopg")  # operation-duration labels
        self.pool: weakref.ref[_Pool] | None = None  # set once the pool exists

    def failed(self, error: BaseException, op: str) -> _Pool | None:
        """Report `error` (counted once); the pool to drain when every connection is stale."""
        if not report_fault(self.guard, error, op, unknown_is_restart=op == "ping"):
            return None
        return self.pool() if self.pool is not None else None


def _stats(pool: _Pool) -> PoolStats:
    """psycopg_pool's own figures (``get_stats`` keeps counters only once they moved)."""
    stats = pool.get_stats()
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    return PoolStats(
        idle=idle,
        used=max(size - idle, 0),
        max=stats.get("pool_max"),
        pending=stats.get("requests_waiting", 0),
        timeouts=stats.get("requests_errors", 0),
        wait_seconds=stats.get("requests_wait_ms", 0) / 1000.0,
    )


def _classifier(guard: FaultReporter | None) -> Classifier | None:
    return guard.classify if guard is not None else None


def _socket(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> int | None:
    try:
        return conn.pgconn.socket
    except psycopg.Error:
        return None  # closed: the driver raises its own error


class HardenedConnection(psycopg.Connection[Row]):
    """A `psycopg.Connection` whose network waits run under a socket deadline.

    psycopg routes every blocking exchange with the server (execute, fetch
    from a server-side cursor, commit, rollback, copy, pipeline sync) through
    `wait`; this one arms `outlast.SocketDeadline` around it. `notifies` and
    waits that carry a timeout of their own are left alone.
    """

    _outlast: _Hooks | None = None
    _outlast_op = "execute"
    _outlast_unbounded = 0
    _outlast_connect: Hardening | None = None  # set on a pool's own subclass
    _outlast_guard: FaultReporter | None = None  # likewise: whose classifier decides

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        """`psycopg.Connection.connect`, retried as the pool's preset allows."""
        parent = super().connect
        preset = cls._outlast_connect
        if preset is None:
            return parent(conninfo, **kwargs)
        return retry_connect(
            preset, lambda: parent(conninfo, **kwargs), classifier=_classifier(cls._outlast_guard)
        )

    def wait(
        self, gen: PQGen[RV], interval: float | None = None, timeout: float | None = None
    ) -> RV:
        hooks = self._outlast
        if hooks is None or timeout is not None or self._outlast_unbounded:
            return self._wait(gen, interval, timeout)
        if self._outlast_op == "execute":
            reaching(hooks.guard)  # a web request admitted on first use: here it is
        try:
            with statement_bound(_socket(self), hooks.preset, hooks.timed):
                return self._wait(gen, interval, timeout)
        except psycopg.Error as error:
            pool = hooks.failed(error, self._outlast_op)
            if isinstance(pool, psycopg_pool.ConnectionPool):
                pool.drain()  # every idle connection is as stale as this one
            raise

    def _wait(self, gen: PQGen[RV], interval: float | None, timeout: float | None) -> RV:
        if interval is None:
            return super().wait(gen, timeout=timeout)
        return super().wait(gen, interval, timeout)

    def notifies(
        self, *, timeout: float | None = None, stop_after: int | None = None
    ) -> Generator[psycopg.Notify, None, None]:
        self._outlast_unbounded += 1  # waiting for notifications is not a statement
        try:
            yield from super().notifies(timeout=timeout, stop_after=stop_after)
        finally:
            self._outlast_unbounded -= 1


class AsyncHardenedConnection(psycopg.AsyncConnection[Row]):
    """The asyncio twin of `HardenedConnection`."""

    _outlast: _Hooks | None = None
    _outlast_op = "execute"
    _outlast_unbounded = 0
    _outlast_connect: Hardening | None = None
    _outlast_guard: FaultReporter | None = None

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        """`psycopg.AsyncConnection.connect`, retried as the pool's preset allows."""
        parent = super().connect
        preset = cls._outlast_connect
        if preset is None:
            return await parent(conninfo, **kwargs)
        return await aretry_connect(
            preset, lambda: parent(conninfo, **kwargs), classifier=_classifier(cls._outlast_guard)
        )

    async def wait(
        self, gen: PQGen[RV], interval: float | None = None, timeout: float | None = None
    ) -> RV:
        hooks = self._outlast
        if hooks is None or timeout is not None or self._outlast_unbounded:
            return await self._wait(gen, interval, timeout)
        if self._outlast_op == "execute":
            reaching(hooks.guard)
        try:
            with statement_bound(_socket(self), hooks.preset, hooks.timed):
                return await self._wait(gen, interval, timeout)
        except psycopg.Error as error:
            pool = hooks.failed(error, self._outlast_op)
            if isinstance(pool, psycopg_pool.AsyncConnectionPool):
                await pool.drain()
            raise

    async def _wait(self, gen: PQGen[RV], interval: float | None, timeout: float | None) -> RV:
        if interval is None:
            return await super().wait(gen, timeout=timeout)
        return await super().wait(gen, interval, timeout)

    async def notifies(
        self, *, timeout: float | None = None, stop_after: int | None = None
    ) -> AsyncGenerator[psycopg.Notify, None]:
        self._outlast_unbounded += 1
        try:
            async for notify in super().notifies(timeout=timeout, stop_after=stop_after):
                yield notify
        finally:
            self._outlast_unbounded -= 1


@functools.cache
def _hardened_class(base: type[Any]) -> type[Any]:
    """`base` (a caller's ``connection_class``) with the deadline of our subclass."""
    if not isinstance(base, type) or not issubclass(
        base, psycopg.Connection | psycopg.AsyncConnection
    ):
        return base  # psycopg_pool rejects it with its own message
    ours: type[Any] = (
        AsyncHardenedConnection if issubclass(base, psycopg.AsyncConnection) else HardenedConnection
    )
    if issubclass(base, ours):
        return base
    return type(f"Hardened{base.__name__}", (ours, base), {})


@contextlib.contextmanager
def _pinging(conn: object) -> Iterator[None]:
    """Faults the connection sees now are reported as the pool's ``ping``."""
    if not isinstance(conn, HardenedConnection | AsyncHardenedConnection):
        yield
        return
    conn._outlast_op = "ping"
    try:
        yield
    finally:
        del conn._outlast_op  # back to the class's "execute"


def _report_connect_failure(guard: FaultReporter | None, error: BaseException) -> None:
    if guard is not None:
        guard.record_failure(error, op="connect")


def connect(
    conninfo: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """`psycopg.connect` with the preset's hardening (and its session ``SET``).

    Returns a `HardenedConnection`: every statement runs under the client-side
    statement deadline.
    """
    params, hardening = connect_kwargs(conninfo, preset=preset, kwargs=kwargs)
    if guard is not None:
        guard.check()
    try:
        conn: HardenedConnection[Any] = retry_connect(
            hardening,
            lambda: HardenedConnection.connect(conninfo, **params),
            classifier=_classifier(guard),
        )
        conn._outlast = _Hooks(hardening, guard)
        _setup(conn, session_setup_sql(hardening))
    except psycopg.Error as error:
        _report_connect_failure(guard, error)
        raise
    if guard is not None:
        guard.record_success(op="connect")
    return conn


async def aconnect(
    conninfo: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> psycopg.AsyncConnection[Any]:
    """`psycopg.AsyncConnection.connect` with the preset's hardening."""
    params, hardening = connect_kwargs(conninfo, preset=preset, kwargs=kwargs)
    if guard is not None:
        guard.check()
    try:
        conn: AsyncHardenedConnection[Any] = await aretry_connect(
            hardening,
            lambda: AsyncHardenedConnection.connect(conninfo, **params),
            classifier=_classifier(guard),
        )
        conn._outlast = _Hooks(hardening, guard)
        await _asetup(conn, session_setup_sql(hardening))
    except psycopg.Error as error:
        _report_connect_failure(guard, error)
        raise
    if guard is not None:
        guard.record_success(op="connect")
    return conn


def _setup(conn: psycopg.Connection[Any], statements: list[str]) -> None:
    if not statements:
        return
    for statement in statements:
        conn.execute(statement)
    if not conn.autocommit:
        conn.commit()  # a SET inside a transaction that is rolled back is undone


async def _asetup(conn: psycopg.AsyncConnection[Any], statements: list[str]) -> None:
    if not statements:
        return
    for statement in statements:
        await conn.execute(statement)
    if not conn.autocommit:
        await conn.commit()


class _PoolSetup:
    """The parts of a hardened pool shared by the sync and the async factory."""

    def __init__(
        self,
        conninfo: str,
        preset: str | Hardening,
        guard: FaultReporter | None,
        kwargs: dict[str, Any],
    ) -> None:
        options = dict(kwargs)
        params, self.hardening = connect_kwargs(
            conninfo, preset=preset, kwargs=options.pop("kwargs", None)
        )
        options["kwargs"] = params
        options.setdefault("timeout", self.hardening.pool_timeout)
        options.setdefault("max_lifetime", self.hardening.max_lifetime)
        options.setdefault("reconnect_timeout", RECONNECT_TIMEOUT)
        self.statements = session_setup_sql(self.hardening)
        self.user_configure: Callable[[Any], Any] | None = options.pop("configure", None)
        self.user_check: Callable[[Any], Any] | None = options.pop("check", None)
        self.user_failed: Callable[[Any], Any] | None = options.pop("reconnect_failed", None)
        self.options = options
        # Before the pool exists: an open pool connects in the constructor.
        self.hooks = _Hooks(self.hardening, guard)

    def connection_class(self, default: type[Any]) -> type[Any]:
        cls = _hardened_class(self.options.pop("connection_class", default))
        if not self.hardening.connect_retries or not issubclass(
            cls, HardenedConnection | AsyncHardenedConnection
        ):
            return cls
        # psycopg_pool connects through ``connection_class.connect``: a
        # subclass of this pool's own carries the preset that retries it.
        attrs = {"_outlast_connect": self.hardening, "_outlast_guard": self.hooks.guard}
        return type(cls.__name__, (cls,), attrs)

    def attach(self, pool: _Pool) -> None:
        self.hooks.pool = weakref.ref(pool)
        register_pool(pool, driver="psycopg", guard=self.hooks.guard, reader=_stats, name=pool.name)

    def adopt(self, conn: Any) -> None:
        """A new connection of the pool: give it the pool's hooks."""
        if isinstance(conn, HardenedConnection | AsyncHardenedConnection):
            conn._outlast = self.hooks

    def ping_failed(self, error: BaseException) -> _Pool | None:
        return self.hooks.failed(error, "ping")

    def record(self, op: str) -> None:
        if self.hooks.guard is not None:
            self.hooks.guard.record_success(op=op)

    def reconnect_failed(self) -> None:
        if self.hooks.guard is not None:
            self.hooks.guard.record_failure(
                psycopg.OperationalError("pool could not reconnect in time"), op="connect"
            )


def ConnectionPool(
    conninfo: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> psycopg_pool.ConnectionPool[Any]:
    """A `psycopg_pool.ConnectionPool` with the preset's hardening.

    Every keyword of `psycopg_pool.ConnectionPool` is accepted; ``configure``,
    ``check`` and ``reconnect_failed`` given here run after outlast's own; a
    ``connection_class`` is subclassed to add the statement deadline.
    """
    setup = _PoolSetup(conninfo, preset, guard, kwargs)
    user_configure, user_check, user_failed = (
        setup.user_configure,
        setup.user_check,
        setup.user_failed,
    )
    ping_timeout = setup.hardening.ping_timeout

    def configure(conn: psycopg.Connection[Any]) -> None:
        setup.adopt(conn)
        _setup(conn, setup.statements)
        if user_configure is not None:
            user_configure(conn)
        setup.record("connect")

    def check(conn: psycopg.Connection[Any]) -> None:
        try:
            with _pinging(conn), socket_deadline.bound(_socket(conn), ping_timeout):
                psycopg_pool.ConnectionPool.check_connection(conn)
        except Exception as error:
            stale = setup.ping_failed(error)
            if isinstance(stale, psycopg_pool.ConnectionPool):
                stale.drain()  # every idle connection is as stale as this one
            raise
        if user_check is not None:
            user_check(conn)
        setup.record("ping")

    def reconnect_failed(pool: psycopg_pool.ConnectionPool[Any]) -> None:
        setup.reconnect_failed()
        if user_failed is not None:
            user_failed(pool)

    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        conninfo,
        connection_class=setup.connection_class(HardenedConnection),
        configure=configure,
        check=check,
        reconnect_failed=reconnect_failed,
        **setup.options,
    )
    setup.attach(pool)
    return pool


def AsyncConnectionPool(
    conninfo: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> psycopg_pool.AsyncConnectionPool[Any]:
    """A `psycopg_pool.AsyncConnectionPool` with the preset's hardening.

    ``open`` defaults to False (opening in the constructor is deprecated for
    async pools): use ``async with pool:`` or ``await pool.open()``.
    """
    setup = _PoolSetup(conninfo, preset, guard, kwargs)
    setup.options.setdefault("open", False)
    user_configure, user_check, user_failed = (
        setup.user_configure,
        setup.user_check,
        setup.user_failed,
    )
    ping_timeout = setup.hardening.ping_timeout

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        setup.adopt(conn)
        await _asetup(conn, setup.statements)
        if user_configure is not None:
            await user_configure(conn)
        setup.record("connect")

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            with _pinging(conn), socket_deadline.bound(_socket(conn), ping_timeout):
                await psycopg_pool.AsyncConnectionPool.check_connection(conn)
        except Exception as error:
            stale = setup.ping_failed(error)
            if isinstance(stale, psycopg_pool.AsyncConnectionPool):
                await stale.drain()
            raise
        if user_check is not None:
            await user_check(conn)
        setup.record("ping")

    async def reconnect_failed(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        setup.reconnect_failed()
        if user_failed is not None:
            result = user_failed(pool)
            if isinstance(result, Awaitable):
                await result

    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        conninfo,
        connection_class=cast(Any, setup.connection_class(AsyncHardenedConnection)),
        configure=configure,
        check=check,
        reconnect_failed=reconnect_failed,
        **setup.options,
    )
    setup.attach(pool)
    return pool
