"""`classify(exc)`: any driver or SQLAlchemy exception -> one `Fault`.

Drivers are recognised without importing them (duck typing):

- the SQLSTATE from ``exc.sqlstate`` (psycopg 3, asyncpg, SQLAlchemy's asyncpg
  adapter) or ``exc.pgcode`` (psycopg2), when it is a five-character code;
- the module of the exception's classes (``psycopg``, ``psycopg2``,
  ``psycopg_pool``, ``asyncpg``, ``sqlalchemy``) and their DB-API class names
  (``OperationalError``, ``IntegrityError``...);
- the message text, for the errors that carry no SQLSTATE (libpq reports
  login-time errors with ``sqlstate=None``; Neon's proxy sends ``XX000``);
  the patterns live in `outlast._core.faults.messages`;
- the frames of the traceback, to tell "while connecting" from "while running a
  statement" (the driver's ``connect`` / SQLAlchemy's pool checkout), and the
  server's own fields, to tell PostgreSQL's ERROR about a connection *it* made
  (postgres_fdw, dblink: ``remote_unavailable``) from one about ours
  (`outlast._core.faults.origin`).

SQLAlchemy's ``DBAPIError.orig`` and explicit ``raise ... from`` chains
(``__cause__``) are followed, with a depth limit and cycle detection. The
implicit ``__context__`` is not: an application bug raised while handling a
database error is still an application bug.

Order of evidence: SQLSTATE first, exception class second, message text last,
except that Neon's texts win over the generic ``XX000`` they arrive with. A host
name such as ``ep-x.neon.tech`` inside a message proves nothing and is ignored.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from .fault import FOREIGN_REASONS, Fault, FaultKind, Phase
from .messages import CONNECT_WORDING, DSN_PATTERNS, NEON_PATTERNS, TEXT_PATTERNS, match_text
from .origin import (
    DRIVER_ROOTS,
    driver_frames,
    has_connect_frames,
    has_driver_frames,
    has_pool_wait_frames,
    raised_by_postgres,
)
from .redact import summarize
from .sqlstate import LOGIN_SQLSTATES, lookup_sqlstate

__all__ = ["attach_fault", "attached_fault", "classify"]

_U = FaultKind.UNAVAILABLE
_C = FaultKind.CONFLICT
_R = FaultKind.READ_ONLY
_T = FaultKind.TIMEOUT
_P = FaultKind.PERMANENT

_TRANSIENT = frozenset({_U, _C, _R})

_MAX_CHAIN = 16
_MAX_TEXT = 8192

_SQLSTATE_RE = re.compile(r"[0-9A-Z]{5}")

# Reasons that only exist before a statement could have been sent.
_CONNECT_REASONS = frozenset(
    {
        "connection_refused",
        "connection_closed",
        "connection_failed",
        "connect_timeout",
        "dns_failure",
        "host_unreachable",
        "pool_timeout",
        "starting_up",
        "shutting_down",
        "too_many_connections",
        "auth_failed",
        "endpoint_disabled",
        "compute_unreachable",
        "ssl_config",
        "auth_config",
        "unsupported_startup_parameter",
        "bad_dsn",
        "invalid_connection_option",
        "pool_closed",
        "too_many_parameters",
    }
)

# An exception that a lower layer of outlast already knows the truth about
# (the request's budget shut its socket down, not the server) carries its
# `Fault` here; `classify` returns it as is.
_ATTACHED = "__outlast_fault__"


def attached_fault(exc: BaseException) -> Fault | None:
    """The `Fault` attached to `exc` or to an error it wraps (None: classify it)."""
    try:
        return _attached(_chain(exc))
    except Exception:  # pragma: no cover - defensive
        return None


def _attached(chain: Iterable[BaseException]) -> Fault | None:
    for e in chain:
        fault = _safe_getattr(e, _ATTACHED)
        if isinstance(fault, Fault):
            return fault
    return None


def attach_fault(exc: BaseException, fault: Fault) -> None:
    """Make `classify(exc)` (and of any error wrapping it) return `fault`."""
    try:
        setattr(exc, _ATTACHED, fault)
    except (AttributeError, TypeError):  # pragma: no cover - exceptions that refuse attributes
        pass


# Reasons after which a COMMIT that was in flight may or may not have happened.
_LOST_REASONS_KINDS = frozenset({_U})

# Driver modules whose ValueErrors mean "this DSN cannot be parsed".
_DSN_PARSER_MODULES = frozenset({"sqlalchemy.engine.url"})


# Neon's texts override these generic codes (the proxy sends everything as XX000).
_OVERRIDABLE_SQLSTATES = frozenset({"XX000", "08000", "08001", "08006", "58000"})

# PgBouncer sends every error of its own as 08P01 (a bad password, a startup
# parameter it does not know, a full pool, a server connection that died): its
# text tells which.
_TEXT_REFINED_SQLSTATES = frozenset({"08P01"})

# Codes that, for this session's own connection, PostgreSQL only sends as
# FATAL (the session ends). Sent by PostgreSQL itself at ERROR level -- the
# session goes on -- they describe a connection the *server* made: postgres_fdw
# or dblink reaching a remote server (08001 "could not connect to server",
# 08006 when the remote died mid-query).
_FOREIGN_SQLSTATES = frozenset(
    {"08000", "08001", "08003", "08004", "08006", "08007", "57P01", "57P02", "57P03", "53300"}
)

# Generic reasons that a more specific one found deeper in the chain should replace.
_GENERIC_REASONS = frozenset(
    {
        "connection_lost",
        "connection_exception",
        "operational_error",
        "database_error",
        "internal_error",
        "interface_error",
    }
)

_DBAPI_CLASSES: tuple[tuple[str, FaultKind, str], ...] = (
    ("IntegrityError", _P, "integrity_constraint_violation"),
    ("DataError", _P, "data_error"),
    ("ProgrammingError", _P, "programming_error"),
    ("NotSupportedError", _P, "feature_not_supported"),
    ("InternalError", _P, "internal_error"),
    ("OperationalError", _U, "operational_error"),
    ("InterfaceError", _P, "interface_error"),
    ("DatabaseError", _P, "database_error"),
)

_OSERROR_REASONS: dict[int, str] = {
    errno.ECONNREFUSED: "connection_refused",
    errno.ECONNRESET: "connection_lost",
    errno.ECONNABORTED: "connection_lost",
    errno.EPIPE: "connection_lost",
    errno.ENOTCONN: "connection_lost",
    errno.ETIMEDOUT: "connect_timeout",
    errno.EHOSTUNREACH: "host_unreachable",
    errno.ENETUNREACH: "host_unreachable",
    errno.ENETDOWN: "host_unreachable",
    errno.EHOSTDOWN: "host_unreachable",
    errno.EADDRNOTAVAIL: "host_unreachable",
}


@dataclass(slots=True)
class _Verdict:
    kind: FaultKind
    reason: str
    sqlstate: str | None
    strength: int  # 4 exact SQLSTATE, 3 specific class/text, 2 generic SQLSTATE, 1 DB-API class
    exc: BaseException
    text: str


def classify(exc: BaseException | None, *, during_commit: bool = False) -> Fault | None:
    """Classify an exception raised by a database call.

    Returns a `Fault` for database faults and ``None`` for everything else
    (application bugs, ``CancelledError``, ``KeyboardInterrupt``...).

    `during_commit=True` says that COMMIT was in flight when `exc` was raised:
    a lost connection then becomes `FaultKind.COMMIT_UNKNOWN` (phase
    ``"commit"``), because nobody knows whether the server committed.

    Never raises, whatever `exc` is.
    """
    try:
        return _classify(exc, during_commit)
    except Exception:  # pragma: no cover - defensive: a classifier must never raise
        return None


def _classify(exc: object, during_commit: bool) -> Fault | None:
    if not isinstance(exc, Exception):
        return None
    chain = list(_chain(exc))
    attached = _attached(chain)
    if attached is not None:
        if during_commit and attached.kind is FaultKind.UNAVAILABLE and attached.phase != "connect":
            # A COMMIT that got no answer (the preset's statement timeout) may
            # or may not have happened.
            return replace(attached, kind=FaultKind.COMMIT_UNKNOWN, phase="commit", transient=False)
        return attached
    verdicts: list[_Verdict] = []
    driver_context = any(_is_driver_exc(e) or has_driver_frames(e) for e in chain)
    for e in chain:
        v = _classify_one(e, driver_context)
        if v is not None:
            verdicts.append(v)
    if not verdicts:
        return None
    best = verdicts[0]
    for v in verdicts[1:]:
        if v.strength > best.strength or (
            best.reason in _GENERIC_REASONS
            and v.reason not in _GENERIC_REASONS
            and v.kind is best.kind
            and v.strength >= 2
        ):
            best = v
        elif v.strength == best.strength and _safe_getattr(best.exc, "orig") is v.exc:
            best = v  # same evidence: prefer the driver's own message to the wrapper's
    phase = _phase(best, chain)
    kind = best.kind
    if during_commit and phase != "connect":
        phase = "commit"
        if kind in _LOST_REASONS_KINDS or best.reason == "client_timeout":
            kind = FaultKind.COMMIT_UNKNOWN
    message = summarize(best.text) or type(best.exc).__name__
    return Fault(
        kind=kind,
        reason=best.reason,
        sqlstate=best.sqlstate,
        phase=phase,
        transient=kind in _TRANSIENT,
        message=message,
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps (`.orig`, `__cause__`), depth-limited, cycle-safe."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _MAX_CHAIN:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (_safe_getattr(e, "orig"), getattr(e, "__cause__", None)):
            if isinstance(nxt, Exception) and id(nxt) not in seen:
                todo.append(nxt)


def _safe_getattr(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _safe_str(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        try:
            args = exc.args
            text = " ".join(a for a in args if isinstance(a, str))
        except Exception:
            text = ""
    return text[:_MAX_TEXT]


def _modules(exc: BaseException) -> Iterator[str]:
    for cls in type(exc).__mro__:
        mod = cls.__dict__.get("__module__")
        if isinstance(mod, str):
            yield mod


def _is_driver_exc(exc: BaseException) -> bool:
    return any(mod.partition(".")[0] in DRIVER_ROOTS for mod in _modules(exc))


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _sqlstate(exc: BaseException) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        value = _safe_getattr(exc, attr)
        if isinstance(value, str) and _SQLSTATE_RE.fullmatch(value):
            return value
    return None


def _classify_one(exc: BaseException, driver_context: bool) -> _Verdict | None:
    text = _safe_str(exc)
    code = _sqlstate(exc)
    names = _class_names(exc)
    is_driver = _is_driver_exc(exc)

    # 1. SQLSTATE (Neon's texts win over the generic codes they arrive with).
    if code is not None:
        if code in _OVERRIDABLE_SQLSTATES:
            neon = match_text(text, NEON_PATTERNS)
            if neon is not None:
                return _Verdict(neon[0], neon[1], code, 4, exc, text)
        from_server = raised_by_postgres(exc)
        if code in _FOREIGN_SQLSTATES and from_server:
            return _Verdict(_U, "remote_unavailable", code, 4, exc, text)
        if code in _TEXT_REFINED_SQLSTATES:
            hit = match_text(text, TEXT_PATTERNS)
            if hit is not None:
                return _Verdict(hit[0], hit[1], code, 4, exc, text)
            if from_server:
                # PostgreSQL itself rejected a message of this session and
                # carries on: a driver or protocol bug, not an outage.
                return _Verdict(_P, "protocol_violation", code, 4, exc, text)
        kind, reason = lookup_sqlstate(code)
        if code == "57014":
            refined = match_text(text, TEXT_PATTERNS)
            if refined is not None and refined[0] is _T:
                reason = refined[1]
        elif code == "57P03" and "shutting down" in text.lower():
            reason = "shutting_down"
        generic = reason in _GENERIC_REASONS or code in _OVERRIDABLE_SQLSTATES
        return _Verdict(kind, reason, code, 2 if generic else 4, exc, text)

    # 2. The DSN or options are wrong: libpq's wording (whatever class psycopg
    # picked), asyncpg's configuration errors and its DSN parser's ValueErrors.
    config = _config_error(exc, text, names, is_driver, driver_context)
    if config is not None:
        return _Verdict(_P, config, None, 3, exc, text)

    # 3. Exception classes (driver classes by name, then standard library classes).
    by_class = _by_class(exc, names, is_driver, driver_context)
    if by_class is not None and by_class[1] not in _GENERIC_REASONS:
        return _Verdict(by_class[0], by_class[1], None, 3, exc, text)

    # 4. Message text, for driver exceptions (and OSErrors seen inside a driver).
    if is_driver or by_class is not None:
        hit = match_text(text, NEON_PATTERNS) or match_text(text, TEXT_PATTERNS)
        if hit is not None:
            return _Verdict(hit[0], hit[1], None, 3, exc, text)
        if is_driver and CONNECT_WORDING.search(text.lower()):
            return _Verdict(_U, "connection_failed", None, 3, exc, text)
    if by_class is not None:
        return _Verdict(by_class[0], by_class[1], None, 1, exc, text)
    return None


def _config_error(
    exc: BaseException, text: str, names: set[str], is_driver: bool, driver_context: bool
) -> str | None:
    if is_driver:
        hit = match_text(text, DSN_PATTERNS)
        if hit is not None:
            return hit[1]
        if "ClientConfigurationError" in names:  # asyncpg: a bad DSN or connect() option
            return (
                "bad_dsn" if text.lower().startswith("invalid dsn") else "invalid_connection_option"
            )
        return None
    # A bare ValueError is an application bug, unless a driver's own DSN parser
    # raised it (asyncpg's int() of a port, urllib's "Invalid IPv6 URL",
    # SQLAlchemy's URL parser; asyncio's "port must be 0-65535" OverflowError).
    if driver_context and isinstance(exc, ValueError | OverflowError):
        inner = driver_frames(exc)
        if inner:
            mod, func = inner[-1]  # the innermost driver frame
            if mod in _DSN_PARSER_MODULES or (
                mod == "asyncpg.connect_utils" and func.startswith(("_parse", "_validate"))
            ):
                return "bad_dsn"
            if mod == "asyncpg.connect_utils" and isinstance(exc, OverflowError):
                return "invalid_connection_option"
    return None


def _by_class(
    exc: BaseException, names: set[str], is_driver: bool, driver_context: bool
) -> tuple[FaultKind, str] | None:
    if is_driver:
        if "ConnectionTimeout" in names:  # psycopg 3
            return _U, "connect_timeout"
        if "PoolTimeout" in names:  # psycopg_pool
            return _U, "pool_timeout"
        if "TooManyRequests" in names:  # psycopg_pool: the waiting queue is full
            return _U, "pool_timeout"
        if "TimeoutError" in names and "SQLAlchemyError" in names:  # QueuePool checkout
            return _U, "pool_timeout"
        if "DisconnectionError" in names:  # SQLAlchemy pool
            return _U, "connection_lost"
        if "ConnectionDoesNotExistError" in names or "ConnectionFailureError" in names:
            return _U, "connection_lost"  # asyncpg (normally carries its SQLSTATE)
        if "DBAPIError" in names and _safe_getattr(exc, "connection_invalidated") is True:
            return _U, "connection_lost"
        for cls_name, kind, reason in _DBAPI_CLASSES:
            if cls_name in names:
                return kind, reason
        if "InterfaceError" in names or "InternalClientError" in names:
            return _P, "interface_error"
        return None
    if not isinstance(exc, OSError):
        return None
    # Standard library errors: asyncpg lets these through unwrapped.
    if "SSLCertVerificationError" in names:
        return _P, "ssl_config"
    if driver_context and "rejected ssl upgrade" in _safe_str(exc).lower():
        return _P, "ssl_config"  # asyncpg: ssl required, the server answered "N"
    if "SSLZeroReturnError" in names or "SSLEOFError" in names:
        return _U, "connection_lost"
    if "SSLError" in names:
        return _U, "ssl_error"
    if "gaierror" in names:
        return _U, "dns_failure"
    if isinstance(exc, ConnectionRefusedError):
        return _U, "connection_refused"
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe
        return _U, "connection_lost"
    if isinstance(exc, TimeoutError):
        if not driver_context:
            return None  # the application's own timeout
        if has_connect_frames(exc):
            return _U, "connect_timeout"
        if has_pool_wait_frames(exc):
            return _U, "pool_timeout"  # asyncpg: acquire(timeout=) found no free connection
        return _T, "client_timeout"
    err = exc.errno if isinstance(exc.errno, int) else None
    if err is not None and err in _OSERROR_REASONS:
        return _U, _OSERROR_REASONS[err]
    if driver_context and has_connect_frames(exc):
        if isinstance(exc, FileNotFoundError):  # asyncpg: no Unix socket = no server
            return _U, "connection_refused"
        text = _safe_str(exc).lower()
        if "connect call failed" in text or "multiple exceptions" in text:
            return _U, "connection_refused"
        return _U, "connection_failed"
    text = _safe_str(exc).lower()
    if "connect call failed" in text:  # asyncio's "Multiple exceptions: ..." OSError
        return _U, "connection_refused"
    return None


def _phase(best: _Verdict, chain: list[BaseException]) -> Phase:
    if best.reason in FOREIGN_REASONS:
        return "statement"  # this database answered a statement it was sent
    if best.reason in _CONNECT_REASONS:
        return "connect"
    if best.sqlstate is not None and best.sqlstate in LOGIN_SQLSTATES:
        return "connect"
    for e in chain:
        if "ConnectionTimeout" in _class_names(e) and _is_driver_exc(e):
            return "connect"
        if CONNECT_WORDING.search(_safe_str(e).lower()):
            return "connect"
        if has_connect_frames(e):
            return "connect"
    if best.sqlstate is not None or _is_driver_exc(best.exc) or best.reason == "client_timeout":
        return "statement"
    if any(_is_driver_exc(e) or has_driver_frames(e) for e in chain):
        return "statement"
    return "unknown"
