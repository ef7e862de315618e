"""`wait_for_database`: wait at start-up until PostgreSQL accepts sessions.

How readiness is checked (``driver=``):

- ``"psycopg"`` / ``"psycopg2"`` / ``"asyncpg"``: open a real session with
  that driver and run ``SELECT 1``. This verifies everything a service needs:
  the network, the server, TLS, the password and the database.
- ``"protocol"``: no driver at all. outlast speaks the first steps of the wire
  protocol itself over a socket: ``SSLRequest`` (TLS when the server offers
  it, without certificate checks: nothing secret is sent), then a
  ``StartupMessage`` for the DSN's user and database, and reads the answer.
  An ``ErrorResponse`` is classified by its SQLSTATE, so "the database system
  is starting up" (57P03), "too many clients" (53300), a missing database
  (3D000) or a rejected role (28000) are all told apart. The password is never
  sent: when the server asks for one it is up and accepting sessions, and the
  check stops there (as ``pg_isready`` does), so a wrong password is only
  detected with a driver.
- ``"auto"`` (the default): psycopg, else psycopg2, else the protocol check.
  Drivers are imported only here, lazily; importing outlast imports none.

Faults that waiting cannot fix (authentication failed, database does not
exist: `FaultKind.PERMANENT`) end the wait at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import random
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from outlast._core.faults.classify import classify
from outlast._core.faults.errors import ConfigurationError, DatabaseNotReady
from outlast._core.faults.fault import CONFIG_REASONS, Fault, FaultKind
from outlast._core.faults.redact import LIBPQ_KEYWORDS
from outlast._core.faults.sqlstate import lookup_sqlstate
from outlast._core.guard.backoff import Backoff
from outlast._core.timing.clock import SYSTEM_CLOCK, Clock
from outlast._core.timing.durations import Seconds, seconds

from .dsn import is_url, make_dsn, parse_conninfo, parse_dsn

__all__ = ["WaitAttempt", "wait_for_database"]

logger = logging.getLogger("outlast")

DRIVERS = ("auto", "psycopg", "psycopg2", "asyncpg", "protocol")
_DEFAULT_BACKOFF = Backoff(initial=0.25, multiplier=2.0, cap=2.0, jitter=0.25)


@dataclass(frozen=True, slots=True)
class WaitAttempt:
    """One failed check: which try, why (a redacted `Fault`), the sleep that follows."""

    attempt: int
    fault: Fault
    elapsed: float
    sleep: float


def wait_for_database(
    dsn: str,
    *,
    timeout: Seconds = 60.0,
    backoff: Backoff | None = None,
    driver: str = "auto",
    attempt_timeout: Seconds = 5.0,
    on_attempt: Callable[[WaitAttempt], None] | None = None,
    clock: Clock | None = None,
) -> float:
    """Block until the database at `dsn` accepts sessions; return the seconds waited.

    Retries with `backoff` (capped exponential with jitter) for at most
    `timeout` seconds; each check gets at most `attempt_timeout` seconds (and
    never more than what is left). `on_attempt` is called after each failed
    check (the CLI prints progress with it).

    Raises `DatabaseNotReady` (a `DatabaseUnavailable`) carrying the last
    `Fault`: at once for a fault waiting cannot fix (``fault.kind`` is
    `FaultKind.PERMANENT`: authentication failed, database does not exist),
    else when `timeout` runs out. Raises `ValueError` (`ConfigurationError`)
    for a malformed DSN or option, also when it is the driver that refuses it;
    no message ever contains the password. Takes libpq DSNs and URLs,
    including SQLAlchemy's ``postgresql+psycopg://`` form (the driver's own
    query arguments are left out of the check).
    """
    params = parse_dsn(dsn)
    dsn = _libpq_dsn(dsn, params)
    limit = seconds(timeout, "timeout")
    per_try = seconds(attempt_timeout, "attempt_timeout", allow_zero=False)
    if driver not in DRIVERS:
        raise ConfigurationError(f"driver must be one of {', '.join(DRIVERS)}, not {driver!r}")
    if backoff is None:
        backoff = _DEFAULT_BACKOFF
    elif not isinstance(backoff, Backoff):
        raise ConfigurationError(f"backoff must be an outlast.Backoff, got {backoff!r}")
    check = _checker(driver, dsn, params)
    clock = clock or SYSTEM_CLOCK
    target = _target(params)
    start = clock.monotonic()
    attempt = 0
    while True:
        attempt += 1
        elapsed = clock.monotonic() - start
        try:
            check(max(1.0, min(per_try, limit - elapsed)))
        except Exception as exc:
            fault = classify(exc) if not isinstance(exc, _ProtocolFault) else exc.fault
            if fault is None:
                raise
            elapsed = clock.monotonic() - start
            if fault.reason in CONFIG_REASONS:
                # The driver refused the DSN itself: a bug to fix, not an outage.
                raise ConfigurationError(f"malformed DSN: {_why(fault)}") from None
            if fault.kind is FaultKind.PERMANENT:
                raise _not_ready(f"{target} refused: {_why(fault)}", fault) from None
            delay = backoff.delay(attempt, random.random())
            if elapsed + delay > limit:
                raise _not_ready(
                    f"{target} not ready after {elapsed:.1f}s ({attempt} attempt"
                    f"{'s' if attempt != 1 else ''}): {_why(fault)}",
                    fault,
                ) from None
            logger.info(
                "[DB_WAIT] target=%s try=%d sleep=%.2fs reason=%s",
                target,
                attempt,
                delay,
                fault.reason,
                extra={"outlast_event": "db_wait", "reason": fault.reason},
            )
            if on_attempt is not None:
                on_attempt(WaitAttempt(attempt, fault, elapsed, delay))
            clock.sleep(delay)
            continue
        return clock.monotonic() - start


def _libpq_dsn(dsn: str, params: dict[str, str]) -> str:
    """`dsn` as libpq takes it: a SQLAlchemy ``postgresql+<driver>://`` URL is rewritten.

    Its query may carry the driver's own arguments, which libpq does not know:
    those are left out. A plain DSN is checked as libpq would check it, so a
    keyword libpq refuses is a `ConfigurationError` here, not a failed attempt.
    """
    if not is_url(dsn) or "+" not in dsn.split("://", 1)[0]:
        parse_conninfo(dsn)
        return dsn
    return make_dsn({k: v for k, v in params.items() if k in LIBPQ_KEYWORDS})


def _why(fault: Fault) -> str:
    code = f" [{fault.sqlstate}]" if fault.sqlstate else ""
    if fault.message and fault.message != fault.reason:
        return f"{fault.reason}{code}: {fault.message}"
    return f"{fault.reason}{code}"


def _not_ready(message: str, fault: Fault) -> DatabaseNotReady:
    return DatabaseNotReady(message, retry_after=0.0, fault=fault)


def _target(params: dict[str, str]) -> str:
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "postgres"
    return f"{host}:{port}/{dbname}"


# --------------------------------------------------------------------------
# Checkers: each takes a timeout in seconds, returns on success, raises else.
# --------------------------------------------------------------------------

Checker = Callable[[float], None]


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _checker(driver: str, dsn: str, params: dict[str, str]) -> Checker:
    if driver == "auto":
        driver = next((d for d in ("psycopg", "psycopg2") if _available(d)), "protocol")
    if driver == "protocol":
        return lambda timeout: _protocol_check(params, timeout)
    if not _available(driver):
        raise ConfigurationError(f"driver={driver!r} was asked for but {driver} is not installed")
    if driver == "asyncpg":
        return lambda timeout: _asyncpg_check(params, timeout)
    return lambda timeout: _dbapi_check(driver, dsn, timeout)


def _dbapi_check(module: str, dsn: str, timeout: float) -> None:
    db = importlib.import_module(module)
    conn = db.connect(dsn, connect_timeout=max(2, int(timeout + 0.999)))
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
    finally:
        conn.close()


def _asyncpg_check(params: dict[str, str], timeout: float) -> None:
    import asyncio

    asyncpg = importlib.import_module("asyncpg")
    kwargs: dict[str, object] = {"timeout": timeout}
    for ours, theirs in (("host", "host"), ("user", "user"), ("password", "password")):
        if ours in params:
            kwargs[theirs] = params[ours]
    if "port" in params:
        kwargs["port"] = int(params["port"].split(",")[0])
    if "dbname" in params:
        kwargs["database"] = params["dbname"]

    async def check() -> None:
        conn = await asyncpg.connect(**kwargs)
        try:
            await conn.fetchval("SELECT 1", timeout=timeout)
        finally:
            await conn.close(timeout=timeout)

    asyncio.run(check())


class _ProtocolFault(Exception):
    """A fault found by the protocol check (carries its `Fault`)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.reason)
        self.fault = fault


def _fault(kind: FaultKind, reason: str, message: str, sqlstate: str | None = None) -> Fault:
    transient = kind is not FaultKind.PERMANENT
    return Fault(kind, reason, sqlstate, "connect", transient, message)


_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _protocol_check(params: dict[str, str], timeout: float) -> None:
    host = (params.get("host") or "localhost").split(",")[0]
    port = int((params.get("port") or "5432").split(",")[0])
    user = params.get("user") or "postgres"
    dbname = params.get("dbname") or user
    try:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise _ProtocolFault(
            _fault(FaultKind.UNAVAILABLE, "dns_failure", f"could not resolve host {host!r}")
        ) from exc
    except ConnectionRefusedError as exc:
        raise _ProtocolFault(
            _fault(FaultKind.UNAVAILABLE, "connection_refused", "connection refused")
        ) from exc
    except TimeoutError as exc:
        raise _ProtocolFault(
            _fault(FaultKind.UNAVAILABLE, "connect_timeout", f"no answer within {timeout:.1f}s")
        ) from exc
    except OSError as exc:
        raise _ProtocolFault(
            _fault(FaultKind.UNAVAILABLE, "connection_refused", exc.strerror or "socket error")
        ) from exc
    try:
        _startup(sock, host, user, dbname, params.get("sslmode", "prefer"))
    except _ProtocolFault:
        raise
    except TimeoutError as exc:
        raise _ProtocolFault(
            _fault(FaultKind.UNAVAILABLE, "connect_timeout", f"no answer within {timeout:.1f}s")
        ) from exc
    except (OSError, EOFError, ssl.SSLError) as exc:
        raise _ProtocolFault(
            _fault(FaultKind.UNAVAILABLE, "connection_lost", "the server closed the connection")
        ) from exc
    finally:
        sock.close()


def _startup(sock: socket.socket, host: str, user: str, dbname: str, sslmode: str) -> None:
    conn: socket.socket = sock
    if sslmode != "disable":
        conn.sendall(_SSL_REQUEST)
        answer = _read_exact(conn, 1)
        if answer == b"S":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # a readiness probe; no secret is sent
            conn = context.wrap_socket(conn, server_hostname=None if host[:1] == "/" else host)
        elif answer != b"N":
            raise EOFError("unexpected answer to SSLRequest")
    body = b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (("user", user), ("database", dbname), ("application_name", "outlast-wait"))
    )
    body += b"\0"
    conn.sendall(struct.pack("!ii", len(body) + 8, 3 << 16) + body)
    while True:
        kind = _read_exact(conn, 1)
        (length,) = struct.unpack("!i", _read_exact(conn, 4))
        if length < 4 or length > 1 << 20:
            raise EOFError("malformed message")
        payload = _read_exact(conn, length - 4)
        if kind == b"E":
            raise _ProtocolFault(_error_fault(payload))
        if kind == b"R":
            (code,) = struct.unpack("!i", payload[:4])
            if code != 0:
                return  # the server asks for credentials: it accepts sessions
        elif kind == b"Z":
            conn.sendall(b"X\0\0\0\x04")  # Terminate
            return
        # 'S' ParameterStatus, 'K' BackendKeyData, 'N' NoticeResponse,
        # 'v' NegotiateProtocolVersion: keep reading.


def _read_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def _error_fault(payload: bytes) -> Fault:
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    code = fields.get("C", "08006")
    kind, reason = lookup_sqlstate(code)
    message = fields.get("M", "")
    if code == "57P03" and "shutting down" in message:
        reason = "shutting_down"
    # Server messages name roles and databases, never passwords; keep them short.
    return _fault(kind, reason, message[:200], code)
