"""The message texts `classify` recognises, for errors that carry no SQLSTATE.

libpq reports login-time and client-side errors with ``sqlstate=None``, and
Neon's proxy sends everything as ``XX000``, so part of the fault model is text.
Every pattern is matched against the lowercased message; the first hit wins,
so more specific patterns come first. Only `outlast._core.faults.classify` uses these.
"""

from __future__ import annotations

import re

from .fault import FaultKind

__all__ = ["CONNECT_WORDING", "DSN_PATTERNS", "NEON_PATTERNS", "TEXT_PATTERNS", "match_text"]

_U = FaultKind.UNAVAILABLE
_C = FaultKind.CONFLICT
_R = FaultKind.READ_ONLY
_T = FaultKind.TIMEOUT
_P = FaultKind.PERMANENT

Patterns = tuple[tuple[re.Pattern[str], FaultKind, str], ...]

# Neon's wording, most specific first: (regex, kind, reason).
NEON_PATTERNS: Patterns = (
    (
        re.compile(
            r"exceeded the data transfer quota|compute time quota"
            r"|your (?:account or )?project has exceeded"
        ),
        _P,
        "quota_exceeded",
    ),
    (re.compile(r"endpoint (?:has been|is) disabled"), _U, "endpoint_disabled"),
    (re.compile(r"could(?:n['\u2019]?t| not) connect to compute node"), _U, "compute_unreachable"),
    (re.compile(r"endpoint is temporarily unavailable"), _U, "endpoint_unavailable"),
)

# libpq's complaints about the DSN or connection options (sqlstate None; psycopg
# prefixes "connection is bad: ", psycopg2 "invalid dsn: "). They come before
# the class and the "connection to server ... failed:" wording, which psycopg
# also puts in front of 'invalid integer value "x" for connection option "y"'.
DSN_PATTERNS: Patterns = (
    (
        re.compile(
            r"invalid connection option \"|invalid uri query parameter"
            r"|invalid integer value \"[^\"\n]*\" for connection option"
            r"|invalid port number: \"|invalid \"?[a-z_]+\"? value: \""
            r"|could not parse network address \"|definition of service \"[^\"\n]*\" not found"
            r"|service file \"[^\"\n]*\" not found|invalid ssl protocol version range"
        ),
        _P,
        "invalid_connection_option",
    ),
    (
        re.compile(
            r"missing \"=\" after \"[^\n]*\" in connection info string"
            r"|unterminated quoted string in connection info string"
            r"|invalid percent-encoded token|forbidden value %00 in percent-encoded value"
            r"|in ipv6 host address in uri|ipv6 host address may not be empty in uri"
            r"|unexpected character \"[^\n]*\" at position \d+ in uri"
            r"|key/value separator \"=\" in uri query parameter"
            r"|unexpected spaces found in \"|could not match \d+ (?:port numbers|host names) "
            r"|^invalid dsn:"
        ),
        _P,
        "bad_dsn",
    ),
)

TEXT_PATTERNS: Patterns = (
    # Permanent whatever their class or SQLSTATE: a pooler that rejects the
    # startup parameters it was sent (PgBouncer's FATAL 08P01, which the
    # default preset's startup options trigger), TLS or authentication
    # requirements the server cannot meet, statements the driver refuses to
    # send, a pool the application already closed.
    (re.compile(r"unsupported startup parameter"), _P, "unsupported_startup_parameter"),
    (
        re.compile(
            r"server certificate for \"[^\"\n]*\"(?: \(and \d+ other names?\))? does not match"
            r"|could not read root certificate file|rejected ssl upgrade"
            r"|server does not support ssl|ssl is not enabled on the server"
            r"|certificate verify failed|root certificate file .* does not exist"
            r"|sslmode value \"[^\"\n]*\" invalid"
        ),
        _P,
        "ssl_config",
    ),
    (
        re.compile(
            r"authentication method requirement \"[^\"\n]*\" failed"
            r"|channel binding (?:is )?required|channel binding is not supported"
        ),
        _P,
        "auth_config",
    ),
    (
        re.compile(
            r"number of parameters must be between 0 and \d+"
            r"|number of query arguments cannot exceed \d+"
        ),
        _P,
        "too_many_parameters",
    ),
    (
        re.compile(
            r"\bpool (?:'[^'\n]*' )?is (?:already )?clos(?:ed|ing)|connection pool is closed"
        ),
        _P,
        "pool_closed",
    ),
    (
        re.compile(
            r"the database system is starting up|not yet accepting connections"
            r"|the database system is in recovery mode"
            r"|consistent recovery state has not been yet reached"
        ),
        _U,
        "starting_up",
    ),
    (re.compile(r"the database system is shutting down|is in shutdown"), _U, "shutting_down"),
    (re.compile(r"terminating connection due to administrator command"), _U, "admin_shutdown"),
    (
        re.compile(
            r"terminating connection because of crash of another server process"
            r"|terminating connection due to unexpected postmaster exit"
        ),
        _U,
        "crash_shutdown",
    ),
    (
        re.compile(
            r"too many clients already|remaining connection slots are reserved"
            r"|too many connections for (?:role|database)|no more connections allowed"
        ),
        _U,
        "too_many_connections",
    ),
    (
        re.compile(r"idle-in-transaction timeout|idle in transaction timeout"),
        _T,
        "idle_in_transaction_timeout",
    ),
    (re.compile(r"idle-session timeout"), _U, "idle_session_timeout"),
    (
        re.compile(
            r"password authentication failed|authentication failed for user"
            r"|no pg_hba\.conf entry|fe_sendauth: no password supplied"
            r"|role \"[^\"\n]*\" does not exist|pg_hba\.conf rejects connection"
        ),
        _P,
        "auth_failed",
    ),
    (
        re.compile(r"database \"[^\"\n]*\" does not exist|\bno such database\b"),
        _P,
        "invalid_catalog",
    ),
    (
        re.compile(
            r"could not translate host name|failed to resolve host|name or service not known"
            r"|nodename nor servname|temporary failure in name resolution"
            r"|no address associated with hostname|getaddrinfo failed"
        ),
        _U,
        "dns_failure",
    ),
    (re.compile(r"connection refused|connect call failed"), _U, "connection_refused"),
    (
        # PgBouncer could not log in to the server behind it.
        re.compile(r"pgbouncer cannot connect to server|server login has been failing"),
        _U,
        "connection_failed",
    ),
    (
        re.compile(r"connection to server on socket .* failed: no such file or directory"),
        _U,
        "connection_refused",
    ),
    (
        re.compile(r"no route to host|network is unreachable|host is unreachable|host is down"),
        _U,
        "host_unreachable",
    ),
    (
        re.compile(
            r"queuepool limit of size|couldn't get a connection after|connection pool exhausted"
            r"|\bquery_wait_timeout\b"
        ),
        _U,
        "pool_timeout",
    ),
    (
        re.compile(r"canceling statement due to statement timeout"),
        _T,
        "statement_timeout",
    ),
    (re.compile(r"canceling statement due to lock timeout"), _C, "lock_not_available"),
    (re.compile(r"canceling statement due to user request"), _T, "query_canceled"),
    (re.compile(r"deadlock detected"), _C, "deadlock"),
    (re.compile(r"could not serialize access"), _C, "serialization_failure"),
    (re.compile(r"cannot execute [^\n]* in a read-only transaction"), _R, "read_only_transaction"),
    (
        re.compile(
            r"server closed the connection unexpectedly|connection was closed in the middle"
            r"|consuming input failed|sending query failed|eof detected|unexpected eof"
            r"|lost synchronization with server|could not receive data from server"
            r"|could not send data to server|broken pipe|connection reset"
            r"|ssl connection has been closed unexpectedly|ssl syscall error"
            r"|connection has been closed unexpectedly|connection lost|server conn crashed"
            r"|terminating connection"
        ),
        _U,
        "connection_lost",
    ),
    (
        re.compile(
            r"the connection is closed|connection already closed|connection is closed"
            r"|connection not open|this connection is closed"
        ),
        _U,
        "connection_closed",
    ),
    (
        re.compile(r"timeout expired|connection timeout|connection timed out|timed out"),
        _U,
        "connect_timeout",
    ),
    (re.compile(r"duplicate key value violates unique constraint"), _P, "unique_violation"),
    (re.compile(r"syntax error at or near|syntax error at end of input"), _P, "syntax_error"),
    (re.compile(r"relation \"[^\"\n]*\" does not exist"), _P, "undefined_table"),
)

CONNECT_WORDING = re.compile(
    r"connection to server (?:at|on) [^\n]* failed|could not connect to server"
    r"|^connection failed:|unable to connect to|failed to connect"
)


def match_text(text: str, patterns: Patterns) -> tuple[FaultKind, str] | None:
    low = text.lower()
    for pattern, kind, reason in patterns:
        if pattern.search(low):
            return kind, reason
    return None
