"""Hardened asyncpg connections and pools.

asyncpg sets no TCP keepalive, no ``TCP_USER_TIMEOUT`` and no command timeout,
and its pool never checks a connection before handing it out. `create_pool`
and `connect` fix that:

- ``timeout`` (connect) and ``command_timeout`` (a client-side limit per query:
  the server's ``statement_timeout`` plus a grace period) from the preset;
- the server timeouts travel as ``server_settings`` (startup parameters) where
  allowed; for poolers, which reject them, ``SET`` runs after connecting and
  again on every acquire (the pool's reset on release runs ``RESET ALL``);
- pooler presets pass ``statement_cache_size=0``: no named prepared
  statements, which a transaction pooler cannot keep track of;
- connect retries where the preset asks for them (``neon``): a login refused
  while a compute wakes up is tried again (`outlast._core.connections.connect_retry`);
- keepalives and ``TCP_USER_TIMEOUT`` are set on the socket right after
  connecting (asyncpg exposes no option for them): we reach the socket through
  the connection's asyncio transport, ``transport.get_extra_info("socket")``;
- ``setup`` (run on every acquire) pings the connection under a socket deadline
  of ``ping_timeout`` (with the ``SET`` statements as the ping, for poolers);
- a jittered ``max_lifetime`` per connection, which asyncpg lacks: each
  connection gets its own expiry when it connects; once it has passed, an idle
  connection is terminated at once and one in use when it is released, so the
  pool replaces it on the next acquire;
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
import inspect
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from outlast._core.connections.connect_retry import aretry_connect
from outlast._core.connections.dsn import parse_dsn
from outlast._core.connections.hardening import (
    FaultReporter,
    Hardening,
    apply_socket_options,
    asyncpg_connect_kwargs,
    jittered_lifetime,
    preset_for,
    report_fault,
    session_setup_sql,
)
from outlast._core.connections.pools import PoolStats, register_pool
from outlast._core.connections.socket_deadline import (
    connection_fileno,
    socket_deadline,
    transport_socket,
)
from outlast._core.connections.statements import server_unresponsive
from outlast._core.faults.errors import ConfigurationError
from outlast._core.guard.first_use import reaching
from outlast._core.timing.operations import OPERATIONS, error_kind

__all__ = ["MAX_QUERIES", "HardenedConnection", "connect", "connect_kwargs", "create_pool"]

MAX_QUERIES = 50_000
"""Queries before a pooled connection is replaced (bounds server-side cache growth)."""

# asyncpg >= 0.30 calls a pool's ``reset`` hook on release: where it does not,
# a connection in use when its lifetime ends lives on until it is idle again.
_POOL_HAS_RESET = "reset" in inspect.signature(asyncpg.create_pool).parameters


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


def _own_timeout(conn: object, kwargs: dict[str, Any] | None) -> None:
    """Mark `conn` when its command_timeout is the preset's (the caller gave none)."""
    if isinstance(conn, HardenedConnection) and "command_timeout" not in (kwargs or {}):
        config = getattr(conn, "_config", None)  # asyncpg's ConnectionConfiguration
        conn._outlast_own_timeout = getattr(config, "command_timeout", None) is not None


# The query methods whose ``timeout=None`` means "the connection's
# command_timeout" (the preset's client statement timeout).
_QUERY_METHODS = (
    "execute",
    "executemany",
    "fetch",
    "fetchval",
    "fetchrow",
    "fetchmany",
    "copy_from_table",
    "copy_from_query",
    "copy_to_table",
    "copy_records_to_table",
)


def _bounded_query(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: HardenedConnection, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(super(HardenedConnection, self), name)(*args, **kwargs)
        except TimeoutError as exc:
            if kwargs.get("timeout") is None and self._outlast_own_timeout:
                # The preset's command_timeout (statement_timeout + grace)
                # fired: the server did not even cancel the statement itself.
                server_unresponsive(exc)
            raise

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(asyncpg.Connection, name).__doc__
    return method


class HardenedConnection(asyncpg.Connection):
    """An `asyncpg.Connection` that knows whether its owner closed it.

    ``close()`` and ``terminate()`` (called by the application or by the pool
    retiring the connection) mark it; a termination listener that finds no
    mark knows the server or the network closed it. Its query methods tell
    the preset's ``command_timeout`` firing (no ``timeout=`` given: the server
    is not answering, ``server_unresponsive``) from a ``timeout=`` the caller
    chose (``client_timeout``: a slow query, no evidence either way).
    """

    _outlast_closing = False
    _outlast_pinging = False
    _outlast_in_use = False  # acquired from its pool (between setup and reset)
    _outlast_expires = math.inf  # loop time after which the pool retires it
    _outlast_own_timeout = False  # command_timeout is the preset's, not the caller's

    async def close(self, *, timeout: float | None = None) -> None:
        self._outlast_closing = True
        await super().close(timeout=timeout)

    def terminate(self) -> None:
        self._outlast_closing = True
        super().terminate()


for _name in _QUERY_METHODS:
    if hasattr(asyncpg.Connection, _name):
        setattr(HardenedConnection, _name, _bounded_query(_name))


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
        conn: asyncpg.Connection = await aretry_connect(
            hardening,
            lambda: asyncpg.connect(dsn, **params),
            classifier=guard.classify if guard is not None else None,
        )
        await _finish(conn, hardening)
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        report_fault(guard, error, "connect")
        raise
    _own_timeout(conn, kwargs)
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

    ``init``, ``setup`` and ``reset`` given here run after outlast's own (a
    ``reset`` of yours replaces asyncpg's default ``Connection.reset()``, as
    in asyncpg); ``connect`` is not accepted (outlast installs its own hook to
    harden the socket).
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
    caller = dict(kwargs)
    params, hardening = connect_kwargs(dsn, preset=preset, kwargs=kwargs)
    params.pop("connection_class")  # the pool passes its own to the connect hook
    user_init: Callable[[Any], Awaitable[None]] | None = pool_options.pop("init", None)
    user_setup: Callable[[Any], Awaitable[None]] | None = pool_options.pop("setup", None)
    user_reset: Callable[[Any], Awaitable[None]] | None = pool_options.pop("reset", None)
    # The ping on acquire; for poolers the SET statements themselves (one
    # round trip), since asyncpg's reset on release ran RESET ALL.
    ping_sql = "; ".join(session_setup_sql(hardening)) or "SELECT 1"
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

    guard_name = getattr(guard, "name", None)

    def on_query(record: Any) -> None:
        error = getattr(record, "exception", None)
        if error is not None:
            report(error, "execute")
        if OPERATIONS.enabled:
            kind = "" if error is None else error_kind(error)
            OPERATIONS.observe(guard_name, "asyncpg", float(record.elapsed), kind)

    def retire(ref: weakref.ref[HardenedConnection]) -> None:
        conn = ref()
        if conn is None or conn.is_closed() or conn._outlast_in_use:
            return  # gone already, or in use: retired when it is released
        # Idle in the pool: asyncpg's own idle timeout terminates it the same
        # way; the pool connects a new one when it needs it.
        conn.terminate()

    async def hardened_connect(*args: Any, **kw: Any) -> asyncpg.Connection:
        if guard is not None:
            guard.check()
        try:
            conn: asyncpg.Connection = await aretry_connect(
                hardening,
                lambda: asyncpg.connect(*args, **kw),
                classifier=guard.classify if guard is not None else None,
            )
            await _finish(conn, hardening)
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            report(error, "connect")
            raise
        _own_timeout(conn, caller)
        if isinstance(conn, HardenedConnection):
            lifetime = jittered_lifetime(hardening)
            loop = asyncio.get_running_loop()
            conn._outlast_expires = loop.time() + lifetime
            loop.call_later(lifetime, retire, weakref.ref(conn))
        _watch(conn, lambda error: report(error, "execute"))
        if guard is not None:
            guard.record_success(op="connect")
        return conn

    async def init(conn: Any) -> None:
        conn.add_query_logger(on_query)
        if user_init is not None:
            await user_init(conn)

    async def setup(conn: Any) -> None:
        # Every acquire: inside a web request admitted on first use, this is
        # where it reaches for the database (refused at once while the breaker
        # is open; asyncpg then closes this connection and the pool makes
        # another when it needs one).
        reaching(guard)
        raw = getattr(conn, "_con", None) or conn
        if isinstance(raw, HardenedConnection):
            raw._outlast_in_use = raw._outlast_pinging = True
        try:
            with socket_deadline.bound(connection_fileno(raw), hardening.ping_timeout):
                await conn.execute(ping_sql)
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

    async def reset(conn: Any) -> None:
        if user_reset is not None:
            await user_reset(conn)
        else:
            await conn.reset()  # what asyncpg does without a reset hook
        if not isinstance(conn, HardenedConnection):
            return
        conn._outlast_in_use = False
        loop = asyncio.get_running_loop()
        if loop.time() >= conn._outlast_expires:
            # Runs before anyone can acquire it again: the pool puts it back
            # in its queue right after this hook, and a waiter wakes later.
            loop.call_soon(retire, weakref.ref(conn))

    if _POOL_HAS_RESET:
        pool_options["reset"] = reset
    elif user_reset is not None:
        pool_options["reset"] = user_reset

    pool = asyncpg.create_pool(
        dsn,
        connect=hardened_connect,
        init=init,
        setup=setup,
        **pool_options,
        **params,
    )
    pool_ref.append(pool)
    register_pool(pool, driver="asyncpg", guard=guard, reader=_stats, closed=_closed)
    return pool


def _closed(pool: asyncpg.Pool) -> bool:
    return bool(pool.is_closing())


def _stats(pool: asyncpg.Pool) -> PoolStats:
    """asyncpg's figures (it counts neither waiting requests nor timeouts)."""
    size, idle = pool.get_size(), pool.get_idle_size()
    return PoolStats(idle=idle, used=max(size - idle, 0), max=pool.get_max_size())
