"""How `Guard.transaction` speaks to a source: the adapter protocols and their registry.

An adapter opens a connection on a source (a SQLAlchemy engine, a psycopg
pool, a conninfo string, ...), begins, reads the transaction's marker
(`MARKER_SQL`), commits, rolls back, asks the resolution query
(`status_sql`) on a fresh connection, and, after an error, may say whether
the connection is gone (`connection_gone` reads that off the driver's own
connection). The driver integrations register theirs
with `register_adapter`; `find_adapter` finds one for a source, importing its
integration on first use (by name: the core never imports a higher layer).
The algorithm that uses them lives in `outlast._core.transactions.machine`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from outlast._core.faults.fault import Fault
from outlast._core.guard.backoff import Retry

__all__ = [
    "MARKER_SQL",
    "AsyncTransactionAdapter",
    "GuardLike",
    "StatusReply",
    "TransactionAdapter",
    "connection_gone",
    "find_adapter",
    "register_adapter",
    "status_sql",
]

T = TypeVar("T")

MARKER_SQL = (
    "SELECT COALESCE(pg_current_xact_id_if_assigned(),"
    " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_xact_id() END)::text,"
    " pg_postmaster_start_time()::text"
)
"""Read just before COMMIT: the transaction's xid and the server's start time
(to notice a restart between COMMIT and the question).

The xid is assigned here when the transaction has none yet. A NULL
``pg_current_xact_id_if_assigned()`` does not prove that nothing will be
written: ``NOTIFY`` (and ``pg_notify()``) take their xid only inside COMMIT,
and so does anything else written at commit time (an ORM flushing there, a
commit hook). Assigning it costs a read-only transaction one xid and no
WAL flush: PostgreSQL commits a transaction that wrote no WAL without waiting
for the disk. Only a hot standby gets NULL, and a standby can write nothing,
notifications included; a NULL marker means exactly that."""


def status_sql(placeholder: str) -> str:
    """The resolution query, with the driver's placeholder for the xid (text).

    ``pg_current_xact_id()`` assigns this session a fresh xid, so an xid that
    is not below it was never handed out: the server restarted without it
    (its WAL never reached disk) and the transaction cannot have committed.
    Asking ``pg_xact_status`` about such an xid would be an error.
    """
    return (
        "SELECT CASE WHEN q.x < pg_current_xact_id() THEN pg_xact_status(q.x)"
        " ELSE 'unassigned' END, pg_postmaster_start_time()::text"
        f" FROM (SELECT CAST(CAST({placeholder} AS text) AS xid8) AS x) AS q"
    )


def connection_gone(conn: object) -> bool:
    """Is this driver connection dead (closed, broken)? Read by duck typing, never raises.

    asyncpg ``is_closed()``, psycopg 3 ``broken`` / ``closed``, psycopg2
    ``closed`` (an int); SQLAlchemy's adapted connections wrap them in
    ``driver_connection``. None (no connection any more) is gone too.
    """
    if conn is None:
        return True
    try:
        raw = getattr(conn, "driver_connection", None) or conn
        is_closed = getattr(raw, "is_closed", None)
        if callable(is_closed):
            return bool(is_closed())
        if getattr(raw, "broken", False) is True:
            return True
        return bool(getattr(raw, "closed", False))
    except Exception:
        return False


@dataclass(frozen=True, slots=True)
class StatusReply:
    """What the resolution query returned.

    `status` is ``"committed"``, ``"aborted"``, ``"in progress"``,
    ``"unassigned"`` (the xid was never handed out) or None (the xid is too old
    for the server to remember); `started` is ``pg_postmaster_start_time()``.
    """

    status: str | None
    started: str | None


class TransactionAdapter(Protocol):
    """What `run_transaction` needs from a driver (one adapter per source).

    Handles are opaque to the core. Every method may raise the driver's own
    exceptions; the core classifies them.
    """

    def open(self) -> Any:
        """Check out or open a connection (or session) and return a handle."""
        ...

    def begin(self, handle: Any) -> Any:
        """Start a transaction; return what the user function receives."""
        ...

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        """Run `MARKER_SQL` inside the transaction: (xid or None, server start)."""
        ...

    def commit(self, handle: Any) -> None: ...

    def rollback(self, handle: Any) -> None: ...

    def close(self, handle: Any, *, discard: bool) -> None:
        """Give the connection back; ``discard=True``: it may be broken, drop it."""
        ...

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        """Ask `status_sql` on a *fresh* connection, within about `timeout` seconds."""
        ...

    # Optional: ``lost(handle) -> bool``, called after fn, the marker or COMMIT
    # raised: is the connection gone? Then the server rolled back (or, at
    # COMMIT, may have committed) whatever the driver's error says, and
    # `run_transaction` acts on that (a re-run, a status question) instead of
    # on a client-side error the driver raised as its connection died.


class AsyncTransactionAdapter(Protocol):
    """The asyncio twin of `TransactionAdapter`."""

    async def open(self) -> Any: ...

    async def begin(self, handle: Any) -> Any: ...

    async def marker(self, handle: Any) -> tuple[str | None, str | None]: ...

    async def commit(self, handle: Any) -> None: ...

    async def rollback(self, handle: Any) -> None: ...

    async def close(self, handle: Any, *, discard: bool) -> None: ...

    async def status(self, xid: str, *, timeout: float) -> StatusReply: ...

    # Optional: ``async lost(handle) -> bool``, as on `TransactionAdapter`.


class GuardLike(Protocol):
    """The part of `outlast.Guard` that transactions use."""

    @property
    def name(self) -> str: ...

    @property
    def retry(self) -> Retry: ...

    def check(self) -> None: ...

    def classify(self, exc: BaseException, *, during_commit: bool = False) -> Fault | None: ...

    def record_failure(
        self, exc: BaseException, *, op: str | None = None, fault: Fault | None = None
    ) -> Fault | None: ...

    def record_success(self, *, op: str | None = None) -> None: ...

    def record_commit_outcome(self, outcome: str, *, op: str | None = None) -> None: ...


# --------------------------------------------------------------------------
# Finding the adapter for a source
# --------------------------------------------------------------------------

Matcher = str | Callable[[object], bool]
"""A qualified type name (``"psycopg_pool.pool.ConnectionPool"``, matched
against the source's class and its bases) or a predicate."""

_SYNC: list[tuple[Matcher, Callable[[Any], TransactionAdapter]]] = []
_ASYNC: list[tuple[Matcher, Callable[[Any], AsyncTransactionAdapter]]] = []

# Top-level module of a source's type -> the integration that knows it. Strings
# only: the core never imports a higher layer statically.
_INTEGRATIONS = {
    "sqlalchemy": "outlast.sqlalchemy",
    "psycopg": "outlast.psycopg",
    "psycopg_pool": "outlast.psycopg",
    "psycopg2": "outlast.psycopg2",
    "asyncpg": "outlast.asyncpg",
    "django": "outlast.django",
    "builtins": "outlast.psycopg",  # a conninfo string is for psycopg 3
}


def register_adapter(
    match: Matcher,
    factory: Callable[[Any], Any],
    *,
    asynchronous: bool = False,
) -> None:
    """Teach `Guard.transaction` (or ``atransaction``) a new kind of source.

    `factory(source)` returns a `TransactionAdapter` (an
    `AsyncTransactionAdapter` with ``asynchronous=True``). Later registrations
    win over earlier ones, so an application can override a built-in adapter.
    """
    if asynchronous:
        _ASYNC.insert(0, (match, factory))
    else:
        _SYNC.insert(0, (match, factory))


def _matches(match: Matcher, source: object) -> bool:
    if isinstance(match, str):
        return any(f"{cls.__module__}.{cls.__qualname__}" == match for cls in type(source).__mro__)
    return bool(match(source))


def _lookup(registry: list[tuple[Matcher, Callable[[Any], T]]], source: object) -> T | None:
    for match, factory in registry:
        if _matches(match, source):
            return factory(source)
    return None


def find_adapter(source: object, *, asynchronous: bool = False) -> Any:
    """The adapter for `source`, importing its integration on first use.

    Raises `TypeError` naming the source's type when no integration knows it,
    and `ConfigurationError` (a `ValueError`, without the password) for a
    conninfo string that libpq would refuse: a malformed DSN is a bug to fix,
    not an outage to retry.
    """
    if isinstance(source, str):
        from outlast._core.connections.dsn import parse_conninfo

        parse_conninfo(source)
    registry: list[Any] = _ASYNC if asynchronous else _SYNC
    adapter = _lookup(registry, source)
    if adapter is None:
        integration = _INTEGRATIONS.get(type(source).__module__.split(".")[0])
        if integration is not None:
            try:
                importlib.import_module(f"{integration}._transaction")
            except ModuleNotFoundError as exc:
                raise TypeError(
                    f"{integration} is needed for a {type(source).__qualname__} source"
                    f" but could not be imported ({exc.name} is missing)"
                ) from exc
            adapter = _lookup(registry, source)
    if adapter is None:
        kind = "atransaction" if asynchronous else "transaction"
        raise TypeError(
            f"Guard.{kind}() does not know how to open a transaction on a"
            f" {type(source).__module__}.{type(source).__qualname__}; pass a SQLAlchemy"
            " engine or sessionmaker, a psycopg pool or conninfo string, a psycopg2 pool,"
            " an asyncpg pool, or register an adapter with outlast.register_adapter()"
        )
    return adapter
