"""Hardened SQLAlchemy engines (psycopg 3, psycopg2, asyncpg dialects).

`create_engine` / `create_async_engine` return ordinary SQLAlchemy engines;
`install` hardens an engine the application already has. What gets installed:

- connect arguments: libpq ``connect_timeout``, keepalives and
  ``tcp_user_timeout`` (psycopg, psycopg2); ``timeout`` and ``command_timeout``
  (asyncpg, whose socket gets keepalives and ``TCP_USER_TIMEOUT`` after
  connecting); server timeouts as startup options where allowed; for pooler
  presets no server-side prepared statements (psycopg ``prepare_threshold=None``;
  asyncpg ``statement_cache_size=0`` and the dialect's
  ``prepared_statement_cache_size=0``);
- the pool's creator retries a login refused while a compute wakes up, where
  the preset asks for it (``neon``), sleeping without blocking the event loop
  for async engines;
- ``connect`` listener: ``SET`` the server timeouts where startup options are
  not allowed (poolers), stamp the connection's jittered expiry;
- ``checkout`` listener: retire expired connections, ping with a deadline of
  its own (``pool_pre_ping`` has none and would hang on a frozen link), and
  invalidate the whole pool when the ping shows the server restarted;
- ``before/after_cursor_execute``: a client-side deadline per statement
  (server ``statement_timeout`` + grace, or the web request's remaining
  budget when that is less) that shuts the socket down when the server cannot
  answer at all;
- the dialect's ``do_commit`` / ``do_rollback`` (`outlast.sqlalchemy._commit`):
  the same deadline, a lost COMMIT resolved with ``pg_xact_status()`` (an
  ordinary ``session.commit()`` never turns "maybe applied" into "not
  applied"), and a ROLLBACK on a dead link that stays quiet;
- ``handle_error``: report every fault to the Guard and mark restart-class
  faults (57P01/02/03, 25006, lost or refused connections) as disconnects, so
  SQLAlchemy drops every pooled connection instead of handing out stale ones.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Mapping
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

import outlast
from outlast._core.connections.connect_retry import retry_connect
from outlast._core.connections.hardening import (
    FaultReporter,
    Hardening,
    apply_socket_options,
    asyncpg_connect_kwargs,
    jittered_lifetime,
    libpq_connect_kwargs,
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
from outlast._core.connections.statements import (
    budget_ran_out,
    server_unresponsive,
    statement_limit,
)
from outlast._core.timing.budget import budget_remaining
from outlast._core.timing.operations import OPERATIONS, error_kind
from outlast.sqlalchemy._commit import TransactionEnds, TransactionInfo, autocommit_write_lost

__all__ = ["create_async_engine", "create_engine", "hardening_of", "install"]

_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2", "psycopg_async", "psycopgbinary"})
_PSYCOPG3_DRIVERS = _LIBPQ_DRIVERS - {"psycopg2"}
_ASYNCPG = "asyncpg"
_KEY = "outlast"  # connection-record info key
_ENGINES: weakref.WeakKeyDictionary[Engine, _Hooks] = weakref.WeakKeyDictionary()


def _parse_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError):
        # SQLAlchemy's message quotes the URL, password included: do not chain it.
        raise outlast.ConfigurationError(
            "malformed SQLAlchemy URL (expected postgresql+<driver>://user@host:port/db)"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        raise outlast.ConfigurationError(
            f"outlast.sqlalchemy supports PostgreSQL URLs, not {parsed.get_backend_name()!r}"
        )
    return parsed


def _driver(url: URL) -> str:
    driver = url.get_driver_name()
    if driver not in _LIBPQ_DRIVERS and driver != _ASYNCPG:
        raise outlast.ConfigurationError(
            f"unsupported PostgreSQL driver {driver!r} (use psycopg, psycopg2 or asyncpg)"
        )
    return driver


def _connect_args(
    url: URL, driver: str, preset: Hardening, user_args: Mapping[str, Any]
) -> tuple[dict[str, Any], Hardening]:
    """Merge the preset into connect_args; the user's own values (and URL query) win."""
    query = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()}
    if driver == _ASYNCPG:
        args, preset = asyncpg_connect_kwargs(preset, user_args)
        if not preset.prepared_statements:
            # The dialect keeps its own cache of prepared statements on top
            # of asyncpg's; with asyncpg's off, those are unnamed statements
            # that must not outlive one exchange either.
            args.setdefault("prepared_statement_cache_size", 0)
    else:
        args, preset = libpq_connect_kwargs(preset, query, user_args)
        if not preset.prepared_statements and driver in _PSYCOPG3_DRIVERS:
            args.setdefault("prepare_threshold", None)
    for key in ("statement_cache_size", "prepared_statement_cache_size", "prepare_threshold"):
        if key in query and key not in user_args:
            args.pop(key, None)  # set in the URL by the caller: theirs wins
    return args, preset


def _prepare(
    url: str | URL, preset: str | Hardening, kwargs: dict[str, Any]
) -> tuple[URL, str, dict[str, Any], Hardening]:
    """The parsed URL, its driver, the keywords for SQLAlchemy's factory, the preset."""
    parsed = _parse_url(url)
    driver = _driver(parsed)
    out = dict(kwargs)
    connect_args, hardening = _connect_args(
        parsed, driver, preset_for(parsed.host, preset), out.pop("connect_args", None) or {}
    )
    out = _engine_kwargs(out, hardening)
    out["connect_args"] = connect_args
    return parsed, driver, out, hardening


def _engine_kwargs(kwargs: dict[str, Any], preset: Hardening) -> dict[str, Any]:
    out = dict(kwargs)
    poolclass = out.get("poolclass")
    if poolclass is None or (isinstance(poolclass, type) and issubclass(poolclass, QueuePool)):
        out.setdefault("pool_timeout", preset.pool_timeout)
    # Our checkout listener pings with a deadline; SQLAlchemy's own pre-ping
    # would ping a second time, without one.
    out.setdefault("pool_pre_ping", False)
    return out


def create_engine(
    url: str | URL,
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> Engine:
    """`sqlalchemy.create_engine` with the preset's hardening installed.

    ``connect_args`` and URL query parameters given by the caller win over the
    preset; every other keyword goes to SQLAlchemy unchanged.
    """
    parsed, driver, options, hardening = _prepare(url, preset, kwargs)
    if driver == _ASYNCPG:
        raise outlast.ConfigurationError(
            "asyncpg is an async driver: use outlast.sqlalchemy.create_async_engine"
        )
    engine = sqlalchemy.create_engine(parsed, **options)
    _install(engine, guard, hardening, driver)
    return engine


def create_async_engine(
    url: str | URL,
    *,
    guard: FaultReporter | None = None,
    preset: str | Hardening = "default",
    **kwargs: Any,
) -> AsyncEngine:
    """`sqlalchemy.ext.asyncio.create_async_engine` with the preset's hardening."""
    parsed, driver, options, hardening = _prepare(url, preset, kwargs)
    if driver == "psycopg2":
        raise outlast.ConfigurationError("psycopg2 has no asyncio support: use psycopg or asyncpg")
    engine = _sa_create_async_engine(parsed, **options)
    user_args = kwargs.get("connect_args") or {}
    # asyncpg's command_timeout is the preset's client statement timeout
    # unless the caller chose their own (then it says nothing about health).
    own = driver == _ASYNCPG and "command_timeout" not in user_args
    _install(engine.sync_engine, guard, hardening, driver, own_command_timeout=own)
    return engine


def install(
    engine: Engine | AsyncEngine,
    guard: FaultReporter | None = None,
    *,
    preset: str | Hardening = "default",
) -> Engine | AsyncEngine:
    """Harden an engine the application built itself; returns it.

    Installs the listeners (session ``SET`` after connect, checkout ping with
    a deadline, jittered lifetime, statement deadline, COMMIT resolution,
    fault reporting and whole-pool invalidation) and adds the preset's
    connect arguments (``connect_timeout``, keepalives, ``tcp_user_timeout``;
    asyncpg's ``timeout`` and ``command_timeout``) to each new connection,
    where the engine's own URL and ``connect_args`` do not set them.
    Connections the pool already holds are adopted at their next checkout.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if sync_engine in _ENGINES:
        raise outlast.ConfigurationError("outlast is already installed on this engine")
    driver = _driver(sync_engine.url)
    hardening = preset_for(sync_engine.url.host, preset)
    # Checked now (a pooler preset refuses startup options in the URL): the
    # same merge then runs at each connect, through the do_connect event that
    # may change the connect arguments. The engine's own values win; the
    # timeouts and keepalives go in (a blackholed link must not hold a request
    # in libpq's connect, which has no timeout by default), and the server
    # settings travel as startup options, where the preset allows them, so a
    # new connection needs no SET and no COMMIT of its own.
    _connect_args(sync_engine.url, driver, hardening, {})
    _install(sync_engine, guard, hardening, driver, merge_connect=True)
    return engine


def hardening_of(engine: Engine | AsyncEngine) -> Hardening | None:
    """The hardening installed on an engine, or None."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    hooks = _ENGINES.get(sync_engine)
    return hooks.preset if hooks is not None else None


class _Hooks:
    """The listeners of one engine; a plain object so the engine keeps it alive."""

    def __init__(
        self,
        guard: FaultReporter | None,
        preset: Hardening,
        driver: str,
        *,
        merge_connect: bool = False,
        own_command_timeout: bool = False,
    ) -> None:
        self.guard = guard
        self.preset = preset
        self.driver = driver
        self.setup_sql = session_setup_sql(preset)
        self.merge_connect = merge_connect
        # Labels of the operation-duration histogram (db.client.operation.duration).
        self.timed = (getattr(guard, "name", None), f"sqlalchemy+{driver}")
        # asyncpg's command_timeout is the preset's client statement timeout.
        self.own_command_timeout = own_command_timeout

    # -- pool events -----------------------------------------------------------

    def before_connect(self, dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
        if self.guard is not None:
            self.guard.check()
        if self.merge_connect:  # installed on an engine the application built
            if self.driver == _ASYNCPG:
                merged, _ = asyncpg_connect_kwargs(self.preset, cparams)
            else:
                merged, _ = libpq_connect_kwargs(self.preset, {}, cparams)
            cparams.update(merged)
        _connect_within_budget(self.driver, cparams)

    def on_connect(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        if self.driver == _ASYNCPG:
            raw = getattr(dbapi_connection, "driver_connection", None)
            sock = transport_socket(raw)
            if sock is not None:
                apply_socket_options(sock, self.preset)
        if self.setup_sql:
            cursor = dbapi_connection.cursor()
            try:
                for statement in self.setup_sql:
                    cursor.execute(statement)
            finally:
                cursor.close()
            # SET inside a transaction that is rolled back later is undone.
            dbapi_connection.commit()
        record.info[_KEY] = _ConnInfo(
            fileno=connection_fileno(dbapi_connection),
            expires=time.monotonic() + jittered_lifetime(self.preset),
        )
        if self.guard is not None:
            self.guard.record_success(op="connect")

    def on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        info = record.info.get(_KEY)
        if not isinstance(info, _ConnInfo):
            # Made before outlast was installed on this engine (an app that
            # connected at start-up, Flask-SQLAlchemy hardened on its first
            # request): adopt it; it is pinged below like any other.
            info = _ConnInfo(
                fileno=connection_fileno(dbapi_connection),
                expires=time.monotonic() + jittered_lifetime(self.preset),
            )
            info.fresh = False
            record.info[_KEY] = info
        if self.guard is not None:
            # The breaker is open: fail fast instead of pinging a dead server.
            self.guard.check()
        if info.fresh:
            info.fresh = False
            return
        if time.monotonic() >= info.expires:
            raise exc.DisconnectionError("connection reached its max_lifetime")
        remaining = budget_remaining()
        if remaining is not None and remaining < self.preset.ping_timeout:
            # Late in a web request's budget (it waited for the pool): a ping
            # could outlive the budget. The statements that follow are bounded
            # by what is left, so a dead connection still fails in time.
            return
        try:
            self._ping(dbapi_connection, info.fileno)
        except Exception as error:
            if report_fault(self.guard, error, "ping", unknown_is_restart=True):
                # The server went away under this connection, so under all of
                # them: drop every pooled connection made before now.
                raise exc.InvalidatePoolError("ping failed; server restarted or link lost") from (
                    None
                )
            raise exc.DisconnectionError("ping failed") from None
        if self.guard is not None:
            self.guard.record_success(op="ping")

    def _ping(self, dbapi_connection: DBAPIConnection, fileno: int | None) -> None:
        with socket_deadline.bound(fileno, self.preset.ping_timeout):
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()

    # -- engine events ---------------------------------------------------------

    def before_execute(  # noqa: PLR0917 - SQLAlchemy event signature
        self,
        conn: sqlalchemy.Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        info = conn.info.get(_KEY)
        if isinstance(info, _ConnInfo):
            info.tx.saw(statement)
        if context is None:
            return
        if OPERATIONS.enabled:
            context.outlast_started = time.perf_counter()
        limit = statement_limit(self.preset)
        if limit.timeout is not None and isinstance(info, _ConnInfo) and info.fileno is not None:
            context.outlast_deadline = socket_deadline.arm(info.fileno, limit.timeout)
            context.outlast_by_budget = limit.by_budget

    def after_execute(  # noqa: PLR0917 - SQLAlchemy event signature
        self,
        conn: sqlalchemy.Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        token = getattr(context, "outlast_deadline", 0)
        if token:
            context.outlast_deadline = 0
            socket_deadline.disarm(token)
        started = getattr(context, "outlast_started", None)
        if started is not None:
            context.outlast_started = None
            OPERATIONS.observe(*self.timed, time.perf_counter() - started)

    def handle_error(self, context: ExceptionContext) -> None:
        conn = context.connection
        error = context.original_exception
        execution = context.execution_context
        token = getattr(execution, "outlast_deadline", 0)
        if token:
            execution.outlast_deadline = 0  # type: ignore[union-attr]
            by_budget = getattr(execution, "outlast_by_budget", False)
            if socket_deadline.disarm(token):
                (budget_ran_out if by_budget else server_unresponsive)(error)
            elif isinstance(error, TimeoutError) and self.own_command_timeout and not by_budget:
                # asyncpg's command_timeout (the same preset limit) fired first.
                server_unresponsive(error)
        started = getattr(execution, "outlast_started", None)
        if started is not None:
            execution.outlast_started = None  # type: ignore[union-attr]
            OPERATIONS.observe(*self.timed, time.perf_counter() - started, error_kind(error))
        op = "connect" if conn is None else "execute"
        if conn is not None and context.statement is not None:
            autocommit_write_lost(conn, context.statement, error, self.guard)
        if report_fault(self.guard, error, op) and not context.is_disconnect:
            context.is_disconnect = True


def _connect_within_budget(driver: str, cparams: dict[str, Any]) -> None:
    """A connect inside a web request waits no longer than the rest of its budget."""
    remaining = budget_remaining()
    if remaining is None:
        return
    if driver == _ASYNCPG:
        current = cparams.get("timeout")
        if current is None or float(current) > remaining:
            cparams["timeout"] = max(remaining, 0.1)
        return
    # libpq counts whole seconds, and anything under 2 as 2.
    limit = max(2, math.ceil(remaining))
    current = cparams.get("connect_timeout")
    try:
        if current is None or int(current) <= 0 or int(current) > limit:
            cparams["connect_timeout"] = limit
    except (TypeError, ValueError):  # a malformed value of the caller's: libpq will say so
        pass


class _ConnInfo:
    __slots__ = ("expires", "fileno", "fresh", "tx")

    def __init__(self, *, fileno: int | None, expires: float) -> None:
        self.fileno = fileno
        self.expires = expires
        self.fresh = True
        self.tx = TransactionInfo()  # what the current transaction did


def _transaction_info(dbapi_connection: Any) -> TransactionInfo | None:
    try:
        info = dbapi_connection.info
    except Exception:  # an ad-hoc proxy without a pool entry (NotImplementedError)
        return None
    conn_info = info.get(_KEY) if isinstance(info, dict) else None
    return conn_info.tx if isinstance(conn_info, _ConnInfo) else None


def _retrying_creator(engine: Engine, preset: Hardening, guard: FaultReporter | None) -> None:
    """Make the pool's creator retry refused logins as `preset` allows.

    The creator is where SQLAlchemy runs the ``do_connect`` listeners and the
    driver's connect, so the application's own listeners (a fresh IAM token,
    say) run again on every attempt. ``engine.dispose()`` recreates the pool
    with the same creator.
    """
    if not preset.connect_retries:
        return
    pool = engine.pool
    inner = pool._invoke_creator
    if engine.dialect.is_async:
        # The creator runs inside SQLAlchemy's greenlet: await the sleep
        # through it rather than blocking the event loop.
        from sqlalchemy.util import concurrency

        await_ = getattr(concurrency, "await_", None) or concurrency.await_only

        def sleep(seconds: float) -> None:
            await_(asyncio.sleep(seconds))

    else:

        def sleep(seconds: float) -> None:
            time.sleep(seconds)

    classifier = guard.classify if guard is not None else None

    def creator(connection_record: ConnectionPoolEntry | None = None) -> DBAPIConnection:
        return retry_connect(
            preset,
            lambda: inner(connection_record),  # type: ignore[arg-type]
            sleep=sleep,
            classifier=classifier,
        )

    pool._creator = creator


def _stats(engine: Engine) -> PoolStats:
    """A QueuePool's figures (SQLAlchemy counts neither waiting requests nor timeouts)."""
    pool: Any = engine.pool
    used = int(pool.checkedout())
    idle = int(pool.checkedin())
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", 0)
    limit = size() + max(overflow, 0) if callable(size) and overflow >= 0 else None
    return PoolStats(idle=idle, used=used, max=limit)


def _budget_bounded_waits(pool: Any) -> None:
    """A web request waits for a free pooled connection no longer than its budget.

    SQLAlchemy's ``pool_timeout`` is one number for every checkout; inside a
    request the rest of its budget is the limit (a request whose budget runs
    out in the queue gets its 503 in time, not after ``pool_timeout``). The
    queue's ``get`` is wrapped on the pool instance (``engine.dispose()``
    makes a new pool: wrapped again then).
    """
    queue: Any = getattr(pool, "_pool", None)
    get = getattr(queue, "get", None)
    if get is None or getattr(get, "_outlast", False):
        return

    def bounded_get(block: bool = True, timeout: float | None = None) -> Any:
        remaining = budget_remaining()
        if block and remaining is not None:
            timeout = remaining if timeout is None else min(timeout, remaining)
        return get(block, timeout)

    bounded_get._outlast = True  # type: ignore[attr-defined]
    queue.get = bounded_get


def _install(
    engine: Engine,
    guard: FaultReporter | None,
    preset: Hardening,
    driver: str,
    *,
    merge_connect: bool = False,
    own_command_timeout: bool = False,
) -> None:
    hooks = _Hooks(
        guard,
        preset,
        driver,
        merge_connect=merge_connect,
        own_command_timeout=own_command_timeout,
    )
    _ENGINES[engine] = hooks
    register_pool(engine, driver=f"sqlalchemy+{driver}", guard=guard, reader=_stats)
    _budget_bounded_waits(engine.pool)
    event.listen(engine, "engine_disposed", lambda e: _budget_bounded_waits(e.pool))
    _retrying_creator(engine, preset, guard)
    # COMMIT and ROLLBACK: bounded, a lost COMMIT resolved, a dead link's ROLLBACK quiet.
    TransactionEnds(engine, guard, preset, _transaction_info, hooks.timed).install()
    event.listen(engine, "do_connect", hooks.before_connect)
    event.listen(engine.pool, "connect", hooks.on_connect)
    event.listen(engine.pool, "checkout", hooks.on_checkout)
    event.listen(engine, "before_cursor_execute", hooks.before_execute)
    event.listen(engine, "after_cursor_execute", hooks.after_execute)
    event.listen(engine, "handle_error", hooks.handle_error)
