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
- ``max_inactive_connection_lifetime`` and ``max_queries`` from the preset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from outlast._classify import classify
from outlast._dsn import parse_dsn
from outlast._errors import ConfigurationError
from outlast._hardening import (
    FaultReporter,
    Hardening,
    apply_socket_options,
    connection_fileno,
    is_restart_fault,
    preset_for,
    session_settings,
    session_setup_sql,
    socket_deadline,
    transport_socket,
    without_settings,
)

__all__ = ["connect", "connect_kwargs", "create_pool"]

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
    out = dict(kwargs or {})
    server = dict(out.get("server_settings") or {})
    managed = set(session_settings(Hardening())) & set(server)
    if managed and not hardening.startup_options:
        raise ConfigurationError(
            f"preset {hardening.name!r} connects through a pooler that rejects startup "
            f"parameters ({', '.join(sorted(managed))} in server_settings); drop them and "
            "let outlast apply the settings with SET after connecting"
        )
    hardening = without_settings(hardening, managed)
    out.setdefault("timeout", hardening.connect_timeout)
    if hardening.statement_deadline is not None:
        out.setdefault("command_timeout", hardening.statement_deadline)
    if hardening.application_name:
        server.setdefault("application_name", hardening.application_name)
    if hardening.startup_options:
        for name, value in session_settings(hardening).items():
            server.setdefault(name, value)
    out["server_settings"] = server
    return out, hardening


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
        if guard is not None:
            guard.record_failure(error, op="connect")
        raise
    if guard is not None:
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
    params, hardening = connect_kwargs(dsn, preset=preset, kwargs=kwargs)
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
        fault = guard.record_failure(error, op=op) if guard is not None else classify(error)
        if is_restart_fault(fault):
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
        if guard is not None:
            guard.record_success(op="connect")
        return conn

    async def init(conn: Any) -> None:
        conn.add_query_logger(on_query)
        if user_init is not None:
            await user_init(conn)

    async def setup(conn: Any) -> None:
        fileno = connection_fileno(getattr(conn, "_con", None) or conn)
        token = socket_deadline.arm(fileno, hardening.ping_timeout) if fileno is not None else 0
        try:
            await conn.execute("SELECT 1")
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            report(error, "ping")
            raise
        finally:
            if token:
                socket_deadline.disarm(token)
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
