"""Where an exception came from: its traceback's frames and the server's own fields.

`classify` reads the *phase* of a fault from here. A driver's ``connect``
frames (or SQLAlchemy's pool checkout) mean nothing was sent yet; asyncpg's
pool waiting for a free connection means the pool was exhausted; and the
fields of a server's ErrorResponse tell PostgreSQL itself (which names the
routine that raised the error) from a pooler or proxy (which names none),
and an error that ended the session (FATAL) from one that did not (ERROR).
Drivers are recognised by module name, never imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

__all__ = [
    "DRIVER_ROOTS",
    "driver_frames",
    "frames",
    "has_connect_frames",
    "has_driver_frames",
    "has_pool_wait_frames",
    "raised_by_postgres",
]

DRIVER_ROOTS = frozenset(
    {"psycopg", "psycopg2", "psycopg_c", "psycopg_binary", "psycopg_pool", "asyncpg", "sqlalchemy"}
)

_MAX_FRAMES = 256

# Frames that mean "the driver was establishing a connection".
_CONNECT_FUNCS = frozenset(
    {
        "connect",
        "_connect",
        "__connect",
        "connect_gen",
        "_connect_gen",
        "_connect_addr",
        "__connect_addr",
        "_create_connection",
        "_create_ssl_connection",
        "connect_async",
    }
)
_CONNECT_MODULES = frozenset(
    {"asyncpg.connect_utils", "sqlalchemy.pool.base", "sqlalchemy.pool.impl", "psycopg.generators"}
)

# asyncpg.Pool's wait for a free connection (``acquire(timeout=)``).
_POOL_WAIT_FUNCS = frozenset({"_acquire", "_acquire_impl", "acquire", "__aenter__"})


def _safe_getattr(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def frames(exc: BaseException) -> Iterator[tuple[str, str]]:
    """(module, function) of each frame of `exc`'s traceback, outermost first."""
    tb: TracebackType | None = exc.__traceback__
    n = 0
    while tb is not None and n < _MAX_FRAMES:
        frame = tb.tb_frame
        mod = frame.f_globals.get("__name__")
        yield (mod if isinstance(mod, str) else "", frame.f_code.co_name)
        tb = tb.tb_next
        n += 1


def driver_frames(exc: BaseException) -> list[tuple[str, str]]:
    """The frames of `exc` that belong to a database driver, outermost first."""
    return [(mod, func) for mod, func in frames(exc) if mod.partition(".")[0] in DRIVER_ROOTS]


def has_driver_frames(exc: BaseException) -> bool:
    return any(mod.partition(".")[0] in DRIVER_ROOTS for mod, _ in frames(exc))


def has_connect_frames(exc: BaseException) -> bool:
    """Raised while a driver (or SQLAlchemy's pool) was establishing a connection."""
    return any(
        func in _CONNECT_FUNCS or mod in _CONNECT_MODULES for mod, func in driver_frames(exc)
    )


def has_pool_wait_frames(exc: BaseException) -> bool:
    """The innermost driver frame is asyncpg's pool waiting for a free connection."""
    # asyncpg's own wait_for helper sits between the pool and asyncio.
    inner = [f for f in driver_frames(exc) if f[0] != "asyncpg._asyncio_compat"]
    return bool(inner) and inner[-1][0] == "asyncpg.pool" and inner[-1][1] in _POOL_WAIT_FUNCS


def raised_by_postgres(exc: BaseException) -> bool:
    """Did PostgreSQL itself raise `exc` at ERROR level, inside a session that goes on?

    Its ErrorResponses name the server routine that raised them (the ``R``
    field); poolers and proxies (PgBouncer, Neon's proxy, outlast's chaos
    proxy) send no routine. ERROR, not FATAL or PANIC: the session was not
    ended by it.
    """
    diag = _safe_getattr(exc, "diag")  # psycopg 3, psycopg2
    if diag is not None:
        severity = _safe_getattr(diag, "severity_nonlocalized") or _safe_getattr(diag, "severity")
        routine = _safe_getattr(diag, "source_function")
    else:  # asyncpg
        severity = _safe_getattr(exc, "severity_en") or _safe_getattr(exc, "severity")
        routine = _safe_getattr(exc, "server_source_function")
    return (
        isinstance(severity, str)
        and severity.upper() == "ERROR"
        and isinstance(routine, str)
        and bool(routine)
    )
