"""Hardened psycopg 3 connections and psycopg_pool pools.

The factories return the driver's own objects (`psycopg.Connection`,
`psycopg_pool.ConnectionPool`, ...), configured from a `Hardening` preset:

- connect kwargs: ``connect_timeout``, keepalives, ``tcp_user_timeout``,
  ``application_name`` and, where allowed, the server timeouts as startup
  ``options``; values in the caller's conninfo or ``kwargs`` win;
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

import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool

from outlast._classify import classify
from outlast._dsn import parse_dsn
from outlast._hardening import (
    FaultReporter,
    Hardening,
    check_startup_options,
    is_restart_fault,
    libpq_params,
    preset_for,
    session_setup_sql,
    socket_deadline,
    without_settings,
)

__all__ = ["AsyncConnectionPool", "ConnectionPool", "aconnect", "connect", "connect_kwargs"]

# psycopg_pool doubles its reconnect delay until reconnect_timeout, then gives
# up and starts again at 1 s: this bounds how late it notices a recovery.
RECONNECT_TIMEOUT = 60.0


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
    hardening = preset_for(conninfo or None, preset)
    out = dict(kwargs or {})
    user_options = out.get("options", given.get("options"))
    hardening = without_settings(hardening, check_startup_options(user_options, hardening))
    for key, value in libpq_params(hardening).items():
        if key == "options" and user_options:
            out["options"] = f"{user_options} {value}"
        elif key not in out and key not in given:
            out[key] = value
    return out, hardening


def _report_failure(guard: FaultReporter | None, exc: BaseException, op: str) -> bool:
    """Report `exc`; True when it means the server restarted or the link died."""
    fault = guard.record_failure(exc, op=op) if guard is not None else classify(exc)
    return fault is None or is_restart_fault(fault)


def connect(
    conninfo: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """`psycopg.connect` with the preset's hardening (and its session ``SET``)."""
    params, hardening = connect_kwargs(conninfo, preset=preset, kwargs=kwargs)
    if guard is not None:
        guard.check()
    try:
        conn = psycopg.connect(conninfo, **params)
        _setup(conn, session_setup_sql(hardening))
    except psycopg.Error as error:
        _report_failure(guard, error, "connect")
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
        conn = await psycopg.AsyncConnection.connect(conninfo, **params)
        await _asetup(conn, session_setup_sql(hardening))
    except psycopg.Error as error:
        _report_failure(guard, error, "connect")
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


def _pool_kwargs(
    conninfo: str, preset: str | Hardening, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], Hardening]:
    out = dict(kwargs)
    params, hardening = connect_kwargs(conninfo, preset=preset, kwargs=out.pop("kwargs", None))
    out["kwargs"] = params
    out.setdefault("timeout", hardening.pool_timeout)
    out.setdefault("max_lifetime", hardening.max_lifetime)
    out.setdefault("reconnect_timeout", RECONNECT_TIMEOUT)
    return out, hardening


def ConnectionPool(
    conninfo: str = "",
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> psycopg_pool.ConnectionPool[Any]:
    """A `psycopg_pool.ConnectionPool` with the preset's hardening.

    Every keyword of `psycopg_pool.ConnectionPool` is accepted; ``configure``,
    ``check`` and ``reconnect_failed`` given here run after outlast's own.
    """
    options, hardening = _pool_kwargs(conninfo, preset, kwargs)
    statements = session_setup_sql(hardening)
    user_configure: Callable[[Any], None] | None = options.pop("configure", None)
    user_check: Callable[[Any], None] | None = options.pop("check", None)
    user_failed: Callable[[Any], None] | None = options.pop("reconnect_failed", None)
    pool_ref: list[weakref.ref[psycopg_pool.ConnectionPool[Any]]] = []

    def configure(conn: psycopg.Connection[Any]) -> None:
        _setup(conn, statements)
        if user_configure is not None:
            user_configure(conn)
        if guard is not None:
            guard.record_success(op="connect")

    def check(conn: psycopg.Connection[Any]) -> None:
        token = socket_deadline.arm(conn.fileno(), hardening.ping_timeout)
        try:
            psycopg_pool.ConnectionPool.check_connection(conn)
        except Exception as error:
            if _report_failure(guard, error, "ping"):
                pool = pool_ref[0]() if pool_ref else None
                if pool is not None:
                    pool.drain()  # every idle connection is as stale as this one
            raise
        finally:
            socket_deadline.disarm(token)
        if user_check is not None:
            user_check(conn)
        if guard is not None:
            guard.record_success(op="ping")

    def reconnect_failed(pool: psycopg_pool.ConnectionPool[Any]) -> None:
        if guard is not None:
            guard.record_failure(
                psycopg.OperationalError("pool could not reconnect in time"), op="connect"
            )
        if user_failed is not None:
            user_failed(pool)

    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        conninfo,
        configure=configure,
        check=check,
        reconnect_failed=reconnect_failed,
        **options,
    )
    pool_ref.append(weakref.ref(pool))
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
    options, hardening = _pool_kwargs(conninfo, preset, kwargs)
    options.setdefault("open", False)
    statements = session_setup_sql(hardening)
    user_configure: Callable[[Any], Awaitable[None]] | None = options.pop("configure", None)
    user_check: Callable[[Any], Awaitable[None]] | None = options.pop("check", None)
    user_failed: Callable[[Any], Any] | None = options.pop("reconnect_failed", None)
    pool_ref: list[weakref.ref[psycopg_pool.AsyncConnectionPool[Any]]] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await _asetup(conn, statements)
        if user_configure is not None:
            await user_configure(conn)
        if guard is not None:
            guard.record_success(op="connect")

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        token = socket_deadline.arm(conn.fileno(), hardening.ping_timeout)
        try:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)
        except Exception as error:
            if _report_failure(guard, error, "ping"):
                pool = pool_ref[0]() if pool_ref else None
                if pool is not None:
                    await pool.drain()
            raise
        finally:
            socket_deadline.disarm(token)
        if user_check is not None:
            await user_check(conn)
        if guard is not None:
            guard.record_success(op="ping")

    async def reconnect_failed(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        if guard is not None:
            guard.record_failure(
                psycopg.OperationalError("pool could not reconnect in time"), op="connect"
            )
        if user_failed is not None:
            result = user_failed(pool)
            if isinstance(result, Awaitable):
                await result

    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        conninfo,
        configure=configure,
        check=check,
        reconnect_failed=reconnect_failed,
        **options,
    )
    pool_ref.append(weakref.ref(pool))
    return pool
