"""Pure-logic tests: the SQLSTATE table, evidence order, phases, redaction."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from typing import Any

import asyncpg
import psycopg
import psycopg2
import psycopg2.errors
import pytest
import sqlalchemy.exc

import outlast
from outlast import FaultKind

K = FaultKind


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        ("08006", K.UNAVAILABLE, "connection_lost"),
        ("08P01", K.UNAVAILABLE, "protocol_violation"),
        ("08999", K.UNAVAILABLE, "connection_exception"),
        ("53300", K.UNAVAILABLE, "too_many_connections"),
        ("53100", K.UNAVAILABLE, "out_of_resources"),
        ("53999", K.UNAVAILABLE, "out_of_resources"),
        ("57P01", K.UNAVAILABLE, "admin_shutdown"),
        ("57P02", K.UNAVAILABLE, "crash_shutdown"),
        ("57P03", K.UNAVAILABLE, "starting_up"),
        ("57P04", K.UNAVAILABLE, "database_dropped"),
        ("57P05", K.UNAVAILABLE, "idle_session_timeout"),
        ("58030", K.UNAVAILABLE, "io_error"),
        ("40001", K.CONFLICT, "serialization_failure"),
        ("40P01", K.CONFLICT, "deadlock"),
        ("55P03", K.CONFLICT, "lock_not_available"),
        ("55006", K.CONFLICT, "object_in_use"),
        ("25006", K.READ_ONLY, "read_only_transaction"),
        ("25P03", K.TIMEOUT, "idle_in_transaction_timeout"),
        ("28P01", K.PERMANENT, "auth_failed"),
        ("28000", K.PERMANENT, "auth_failed"),
        ("3D000", K.PERMANENT, "invalid_catalog"),
        ("42601", K.PERMANENT, "syntax_error"),
        ("42P01", K.PERMANENT, "undefined_table"),
        ("42999", K.PERMANENT, "syntax_error_or_access_rule_violation"),
        ("23505", K.PERMANENT, "unique_violation"),
        ("23503", K.PERMANENT, "foreign_key_violation"),
        ("XX000", K.PERMANENT, "internal_error"),
        ("ZZ999", K.PERMANENT, "database_error"),
    ],
)
def test_sqlstate_table_through_psycopg2_pgcode(code: str, kind: FaultKind, reason: str) -> None:
    exc = psycopg2.DatabaseError("x")
    # psycopg2 sets pgcode from the server; simulate on a real psycopg2 class
    fault = outlast.classify(_with_attr(exc, "pgcode", code))
    assert fault is not None
    assert (fault.kind, fault.reason, fault.sqlstate) == (kind, reason, code)
    assert fault.transient is (kind in (K.UNAVAILABLE, K.CONFLICT, K.READ_ONLY))


def _with_attr(exc: BaseException, name: str, value: Any) -> BaseException:
    cls = type(type(exc).__name__, (type(exc),), {name: value, "__module__": type(exc).__module__})
    return cls(*exc.args)


def test_statement_timeout_vs_user_cancel_by_message() -> None:
    qc = psycopg.errors.QueryCanceled
    t = outlast.classify(qc("canceling statement due to statement timeout"))
    c = outlast.classify(qc("canceling statement due to user request"))
    assert t is not None and c is not None
    assert (t.kind, t.reason, t.transient) == (K.TIMEOUT, "statement_timeout", False)
    assert (c.kind, c.reason) == (K.TIMEOUT, "query_canceled")


@pytest.mark.parametrize(
    "make",
    [
        psycopg.errors.InternalError_,
        lambda m: _with_attr(psycopg2.InternalError(m), "pgcode", "XX000"),
        asyncpg.exceptions.InternalServerError,
        lambda m: psycopg.OperationalError(
            'connection to server at "ep-cool-1.neon.tech" (3.3.3.3), port 5432 failed: '
            f"ERROR:  {m}"
        ),
    ],
    ids=["psycopg", "psycopg2", "asyncpg", "libpq-login"],
)
@pytest.mark.parametrize(
    ("text", "kind", "reason"),
    [
        (
            "The endpoint has been disabled. Enable it using Neon API and retry.",
            K.UNAVAILABLE,
            "endpoint_disabled",
        ),
        ("Control plane request failed: endpoint is disabled", K.UNAVAILABLE, "endpoint_disabled"),
        ("Couldn't connect to compute node", K.UNAVAILABLE, "compute_unreachable"),
        ("endpoint is temporarily unavailable", K.UNAVAILABLE, "endpoint_unavailable"),
        (
            "Your project has exceeded the compute time quota. Upgrade your plan.",
            K.PERMANENT,
            "quota_exceeded",
        ),
    ],
)
def test_neon_texts_with_real_driver_classes(
    make: Any, text: str, kind: FaultKind, reason: str
) -> None:
    fault = outlast.classify(make(text))
    assert fault is not None
    assert (fault.kind, fault.reason) == (kind, reason)


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError(
            'connection to server at "ep-cool-1.us-east-2.aws.neon.tech" (3.3.3.3), port 5432 '
            "failed: Connection refused"
        ),
        psycopg2.OperationalError(
            'could not translate host name "ep-cool-1.neon.tech" to address: Name or service '
            "not known\n"
        ),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    ],
)
def test_neon_host_name_changes_nothing(exc: BaseException) -> None:
    fault = outlast.classify(exc)
    assert fault is not None
    assert fault.reason not in ("endpoint_disabled", "compute_unreachable", "quota_exceeded")
    assert fault.kind is K.UNAVAILABLE


def test_sqlalchemy_wrapper_is_unwrapped_and_message_has_no_sql() -> None:
    orig = psycopg.errors.UniqueViolation(
        'duplicate key value violates unique constraint "u_email"\n'
        "DETAIL:  Key (email)=(bob@example.com) already exists."
    )
    wrapped = sqlalchemy.exc.IntegrityError(
        "INSERT INTO u (email) VALUES (%(email)s)", {"email": "bob@example.com"}, orig
    )
    fault = outlast.classify(wrapped)
    assert fault is not None
    assert (fault.kind, fault.reason, fault.sqlstate) == (K.PERMANENT, "unique_violation", "23505")
    assert "bob@example.com" not in fault.message
    assert "INSERT" not in fault.message
    assert "sqlalche.me" not in fault.message
    assert "u_email" in fault.message


def test_cause_chain_with_depth_limit_and_cycles() -> None:
    inner = psycopg.errors.SerializationFailure("could not serialize access")
    outer: BaseException = inner
    for _ in range(5):
        wrapper = RuntimeError("wrapped")
        wrapper.__cause__ = outer
        outer = wrapper
    fault = outlast.classify(outer)
    assert fault is not None and fault.reason == "serialization_failure"
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert outlast.classify(a) is None
    deep: BaseException = inner
    for _ in range(100):
        w = RuntimeError("w")
        w.__cause__ = deep
        deep = w
    assert outlast.classify(deep) is None  # beyond the depth limit


def test_implicit_context_is_not_followed() -> None:
    try:
        try:
            raise psycopg.errors.AdminShutdown("terminating connection")
        except psycopg.Error:
            raise KeyError("bug in the handler") from None
    except KeyError as bug:
        assert outlast.classify(bug) is None
    try:
        try:
            raise psycopg.errors.AdminShutdown("terminating connection")
        except psycopg.Error:
            {}["x"]  # an application bug while handling
    except KeyError as bug2:
        assert bug2.__context__ is not None
        assert outlast.classify(bug2) is None


@pytest.mark.parametrize(
    ("exc", "reason", "phase"),
    [
        (
            ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
            "connection_refused",
            "connect",
        ),
        (ConnectionResetError(104, "Connection reset by peer"), "connection_lost", "unknown"),
        (BrokenPipeError(32, "Broken pipe"), "connection_lost", "unknown"),
        (socket.gaierror(-2, "Name or service not known"), "dns_failure", "connect"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "connection_lost", "unknown"),
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), "
                "[Errno 111] Connect call failed ('127.0.0.1', 5432)"
            ),
            "connection_refused",
            "connect",
        ),
    ],
)
def test_bare_oserrors_asyncpg_style(exc: BaseException, reason: str, phase: str) -> None:
    fault = outlast.classify(exc)
    assert fault is not None
    assert (fault.kind, fault.reason, fault.phase) == (K.UNAVAILABLE, reason, phase)


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        FileNotFoundError(2, "x"),
        PermissionError(),
        ValueError("connection refused"),
        KeyError("sqlstate"),
        sqlalchemy.exc.InvalidRequestError("bad"),
        RuntimeError("timeout expired"),
    ],
)
def test_application_errors_pass_through(exc: BaseException) -> None:
    assert outlast.classify(exc) is None


def test_during_commit() -> None:
    lost = psycopg.OperationalError(
        "consuming input failed: server closed the connection unexpectedly"
    )
    f = outlast.classify(lost, during_commit=True)
    assert f is not None
    assert (f.kind, f.phase, f.transient) == (K.COMMIT_UNKNOWN, "commit", False)
    ser = psycopg.errors.SerializationFailure("could not serialize access")
    f2 = outlast.classify(ser, during_commit=True)
    assert f2 is not None and (f2.kind, f2.phase) == (K.CONFLICT, "commit")
    closed = psycopg.OperationalError("the connection is closed")  # COMMIT never sent
    f3 = outlast.classify(closed, during_commit=True)
    assert f3 is not None and (f3.kind, f3.phase) == (K.UNAVAILABLE, "connect")
    assert f3.before_statement


def test_message_is_redacted_and_trimmed() -> None:
    exc = psycopg.OperationalError(
        'connection to server at "db" failed: FATAL:  password authentication failed for user '
        '"app" dsn=postgresql://app:hunter2@db/x password=hunter2 ' + "x" * 2000
    )
    f = outlast.classify(exc)
    assert f is not None
    assert "hunter2" not in f.message
    assert len(f.message) <= 300


# ---------------------------------------------------------------- redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgres://app:s3cret@db:5432/x", "s3cret"),
        ("postgresql+psycopg://app:p%40ss%2Fw0rd@db/x", "p%40ss%2Fw0rd"),
        ("redis://:topsecret@cache:6379/0", "topsecret"),
        ("host=db password=s3cret user=app", "s3cret"),
        ("host=db password = 's3 cr\\'et' user=app", "cr\\'et"),
        ("postgresql://db/x?user=app&password=s3cret&sslmode=require", "s3cret"),
        ("connect_args={'password': 's3cret', 'host': 'db'}", "s3cret"),
        ('{"password": "s3cret"}', "s3cret"),
        ("PGPASSWORD=s3cret psql", "s3cret"),
        ('[parameters: {"card": "4111111111111111"}]', "4111111111111111"),
        ("DETAIL:  Key (email)=(a@b.c) already exists.", "a@b.c"),
        ("DETAIL:  Failing row contains (1, null, secret-token).", "secret-token"),
        ('invalid input syntax for type integer: "secret-42"', "secret-42"),
        ("invalid input for query argument $1: 'secret-42' (an int is required)", "secret-42"),
        # a raw space in a URL's password, and "password: x" text
        ("could not connect to postgresql://app:S3cr3t Q@db/x", "S3cr3t"),
        ("could not connect to postgresql://app:S3cr3t Q@db/x", "t Q"),
        ("password: hunter22", "hunter22"),
        ("Password: hunter22 user: app", "hunter22"),
        ("PGPASSWORD:'hun ter22'", "hun ter22"),
        # what libpq echoes from a DSN it cannot parse (pieces of the password)
        ('missing "=" after "cr3tz" in connection info string', "cr3tz"),
        ('invalid dsn: invalid connection option "cr3tz"', "cr3tz"),
        ('invalid percent-encoded token: "p%zzw0rd"', "p%zzw0rd"),
        ('invalid integer value "s3cr" for connection option "port"', "s3cr"),
        ('invalid port number: "s3cr"', "s3cr"),
        ('unexpected spaces found in "S3cr3t Q", use percent-encoded spaces (%20)', "S3cr3t"),
        ("invalid literal for int() with base 10: 's3cr'", "s3cr"),
    ],
)
def test_redact_examples(text: str, secret: str) -> None:
    out = outlast.redact(text)
    assert secret not in out
    assert "***" in out


def test_redact_keeps_harmless_text() -> None:
    text = 'password authentication failed for user "app" at postgresql://app@db:5432/x'
    assert outlast.redact(text) == text
    for harmless in (
        'missing "=" after "dbname" in connection info string',
        'invalid sslmode value: "bogus"',
        "Password for user app:",
        "see postgresql://db:5432/x as admin@corp",
    ):
        assert outlast.redact(harmless) == harmless
    assert outlast.redact(12345) == "12345"


def test_redact_never_raises_on_broken_str() -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("x")

    assert "withheld" in outlast.redact(Bad())


_NO_DRIVERS = """
import importlib.abc, json, sys

BLOCKED = {"psycopg", "psycopg2", "psycopg_pool", "psycopg_c", "psycopg_binary",
           "asyncpg", "sqlalchemy"}
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
try:
    import psycopg
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the import hook does not block psycopg")
attempts.clear()

import outlast

class FakeAdminShutdown(Exception):  # duck-typed: a driver-like error with a SQLSTATE
    sqlstate = "57P01"

faults = {
    "refused": outlast.classify(ConnectionRefusedError(111, "Connection refused")),
    "admin": outlast.classify(
        FakeAdminShutdown("terminating connection due to administrator command")
    ),
    "bug": outlast.classify(ValueError("not a database error")),
}
print(json.dumps({
    "faults": {k: None if f is None else [f.kind.name, f.reason, f.transient]
               for k, f in faults.items()},
    "attempts": attempts,
    "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED),
}))
"""


def test_classify_works_when_no_driver_is_importable() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NO_DRIVERS], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(out.stdout)
    assert result["faults"] == {
        "refused": ["UNAVAILABLE", "connection_refused", True],
        "admin": ["UNAVAILABLE", "admin_shutdown", True],
        "bug": None,
    }
    assert result["attempts"] == []  # classify never even tried to import a driver
    assert result["loaded"] == []
