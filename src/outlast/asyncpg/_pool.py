"""Hardened asyncpg connections and pools.

asyncpg sets no TCP keepalive, no ``TCP_USER_TIMEOUT`` and no command timeout,
and its pool never checks a connection before handing it out. `create_pool`
and `connect` fix that:

- ``timeout`` (connect) and ``command_timeout`` (a client-side limit per query:
  the server's ``statement_timeout`` plus a grace period) from the preset;
- the server timeouts travel as ``server_settings`` (startup parameters) where
  allowed; for poolers, which reject them, an ``init`` hook runs ``SET``;
- keepalives and ``TCP_USER_TIMEOUT`` are set on the socket right after
  connecting (asyncpg exposes no option for them): we reach the socket through
  the connection's asyncio transport, ``transport.get_extra_info("socket")``;
- ``setup`` (run on every acquire) pings the connection under a socket deadline
  of ``ping_timeout``;
- a query logger reports every failed query to the Guard; after a
  restart-class fault it calls ``pool.expire_connections()`` so every pooled
  connection is replaced on its next acquire;
- a termination listener does the same when the server or the network closes
  a connection (a FATAL such as 57P01, idle or in flight): asyncpg drops its
  query loggers before they could see that. The connections are
  `HardenedConnection` objects (subclasses of the caller's
  ``connection_class``), which tell their own ``close()`` / ``terminate()``
  (the pool retiring them) from a connection lost under them;
- ``max_inactive_connection_lifetime`` and ``max_queries`` from the preset.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from outlast._deadline import connection_fileno, socket_deadline, transport_socket
from outlast._dsn import parse_dsn
from outlast._errors import ConfigurationError
from outlast._hardening import (
    FaultReporter,
    Hardening,
    apply_socket_options,
    asyncpg_connect_kwargs,
    preset_for,
    report_fault,
    session_setup_sql,
)

__all__ = ["MAX_QUERIES", "HardenedConnection", "connect", "connect_kwargs", "create_pool"]

MAX_QUERIES = 50_000
"""Queries before a pooled connection is replaced (bounds server-side cache growth)."""


def connect_kwargs(
    dsn: str | None = None,
    *,
    preset: str | Hardening = "default",
    kwargs: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Hardening]:
    """Keywords for `asyncpg.connect` (the caller's values win) and the effective preset."""
    if dsn:
        parse_dsn(dsn)  # a malformed DSN fails here, without echoing the password
    hardening = preset_for(dsn or (kwargs and kwargs.get("host")) or None, preset)
    params, hardening = asyncpg_connect_kwargs(hardening, kwargs)
    params["connection_class"] = _hardened_class(params.get("connection_class"))
    return params, hardening


class HardenedConnection(asyncpg.Connection):
    """An `asyncpg.Connection` that knows whether its owner closed it.

    ``close()`` and ``terminate()`` (called by the application or by the pool
    retiring the connection) mark it; a termination listener that finds no
    mark knows the server or the network closed it.
    """

    _outlast_closing = False
    _outlast_pinging = False

    async def close(self, *, timeout: float | None = None) -> None:
        self._outlast_closing = True
        await super().close(timeout=timeout)

    def terminate(self) -> None:
        self._outlast_closing = True
        super().terminate()


@functools.cache
def _hardened_class(base: Any) -> Any:
    """A caller's ``connection_class`` with `HardenedConnection` mixed in."""
    if base is None:
        return HardenedConnection
    if not isinstance(base, type) or not issubclass(base, asyncpg.Connection):
        return base  # asyncpg rejects it with its own message
    if issubclass(base, HardenedConnection):
        return base
    return type(f"Hardened{base.__name__}", (HardenedConnection, base), {})


def _watch(conn: asyncpg.Connection, lost: Callable[[BaseException], object]) -> None:
    """Call `lost` when the server or the network closes `conn` (not its owner)."""
    if not isinstance(conn, HardenedConnection):
        return
    ref = weakref.ref(conn)

    def on_termination(_: object) -> None:
        conn = ref()
        if conn is None or conn._outlast_closing or conn._outlast_pinging:
            return  # closed by its owner, or our ping reports its own failure
        lost(asyncpg.ConnectionDoesNotExistError("connection closed by the server or the network"))

    conn.add_termination_listener(on_termination)


async def _finish(conn: asyncpg.Connection, hardening: Hardening) -> None:
    sock = transport_socket(conn)
    if sock is not None:
        apply_socket_options(sock, hardening)
    for statement in session_setup_sql(hardening):
        await conn.execute(statement)


async def connect(
    dsn: str | None = None,
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> asyncpg.Connection:
    """`asyncpg.connect` with the preset's hardening."""
    params, hardening = connect_kwargs(dsn, preset=preset, kwargs=kwargs)
    if guard is not None:
        guard.check()
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, **params)
        await _finish(conn, hardening)
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        report_fault(guard, error, "connect")
        raise
    if guard is not None:
        _watch(conn, lambda error: report_fault(guard, error, "execute"))
        guard.record_success(op="connect")
    return conn


def create_pool(
    dsn: str | None = None,
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> asyncpg.Pool:
    """`asyncpg.create_pool` with the preset's hardening (``await`` it or ``async with``).

    ``init`` and ``setup`` given here run after outlast's own; ``connect`` is
    not accepted (outlast installs its own hook to harden the socket).
    """
    if "connect" in kwargs:
        raise ConfigurationError("outlast.asyncpg.create_pool installs its own 'connect' hook")
    pool_options = {
        key: kwargs.pop(key)
        for key in (
            "min_size",
            "max_size",
            "max_queries",
            "max_inactive_connection_lifetime",
            "init",
            "setup",
            "reset",
            "connection_class",
            "record_class",
            "loop",
        )
        if key in kwargs
    }
    pool_options["connection_class"] = _hardened_class(pool_options.get("connection_class"))
    params, hardening = connect_kwargs(dsn, preset=preset, kwargs=kwargs)
    params.pop("connection_class")  # the pool passes its own to the connect hook
    user_init: Callable[[Any], Awaitable[None]] | None = pool_options.pop("init", None)
    user_setup: Callable[[Any], Awaitable[None]] | None = pool_options.pop("setup", None)
    pool_options.setdefault("max_queries", MAX_QUERIES)
    pool_options.setdefault("max_inactive_connection_lifetime", hardening.max_lifetime / 6)
    # asyncpg.Pool takes no weak references; the cycle pool -> hook -> pool is
    # ordinary garbage once the application drops the pool.
    pool_ref: list[asyncpg.Pool] = []
    pending: set[asyncio.Task[None]] = set()

    def expire() -> None:
        if not pool_ref:
            return
        pool = pool_ref[0]
        task = asyncio.get_running_loop().create_task(pool.expire_connections())
        pending.add(task)
        task.add_done_callback(pending.discard)

    def report(error: BaseException, op: str) -> None:
        if report_fault(guard, error, op):
            expire()

    def on_query(record: Any) -> None:
        error = getattr(record, "exception", None)
        if error is not None:
            report(error, "execute")

    async def hardened_connect(*args: Any, **kw: Any) -> asyncpg.Connection:
        if guard is not None:
            guard.check()
        try:
            conn: asyncpg.Connection = await asyncpg.connect(*args, **kw)
            await _finish(conn, hardening)
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            report(error, "connect")
            raise
        _watch(conn, lambda error: report(error, "execute"))
        if guard is not None:
            guard.record_success(op="connect")
        return conn

    async def init(conn: Any) -> None:
        conn.add_query_logger(on_query)
        if user_init is not None:
            await user_init(conn)

    async def setup(conn: Any) -> None:
        raw = getattr(conn, "_con", None) or conn
        if isinstance(raw, HardenedConnection):
            raw._outlast_pinging = True
        try:
            with socket_deadline.bound(connection_fileno(raw), hardening.ping_timeout):
                await conn.execute("SELECT 1")
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            report(error, "ping")
            raise
        finally:
            if isinstance(raw, HardenedConnection):
                raw._outlast_pinging = False
        if guard is not None:
            guard.record_success(op="ping")
        if user_setup is not None:
            await user_setup(conn)

    pool = asyncpg.create_pool(
        dsn,
        connect=hardened_connect,
        init=init,
        setup=setup,
        **pool_options,
        **params,
    )
    pool_ref.append(pool)
    return pool
