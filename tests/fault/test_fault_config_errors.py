"""A bad DSN or connection option is a bug to fix, not an outage to retry.

The exceptions come from the real drivers (libpq through psycopg and psycopg2,
asyncpg's DSN parser, SQLAlchemy's wrappers); none of them needs a server.
Where a host is needed it is 127.0.0.1 on a free port, so a driver that did try
to connect would report a refusal (UNAVAILABLE) and fail these tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import psycopg2
import pytest
import sqlalchemy as sa
from fault_kit import capture, free_port

import outlast
from outlast import FaultKind
from outlast.testing import ManualClock

PORT = free_port()
SECRET = "Pw-s3cr3t-z9"


def _psycopg(dsn: str, **kw: Any) -> Callable[[], object]:
    return lambda: psycopg.connect(dsn, connect_timeout=2, **kw)


def _psycopg2(dsn: str, **kw: Any) -> Callable[[], object]:
    return lambda: psycopg2.connect(dsn, connect_timeout=2, **kw)


def _asyncpg(dsn: str) -> Callable[[], object]:
    return lambda: asyncio.run(asyncpg.connect(dsn, timeout=2))


def _sqlalchemy(url: str, **kw: Any) -> Callable[[], object]:
    def run() -> None:
        engine = sa.create_engine(url, **kw)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()

    return run


H = f"127.0.0.1:{PORT}"
KV = f"host=127.0.0.1 port={PORT}"

CASES: list[tuple[str, Callable[[], object], str]] = [
    # (what, how to raise it, reason)
    (
        "psycopg port abc",
        _psycopg(f"postgresql://u:{SECRET}@127.0.0.1:abc/d"),
        "invalid_connection_option",
    ),
    (
        "psycopg2 port abc",
        _psycopg2(f"postgresql://u:{SECRET}@127.0.0.1:abc/d"),
        "invalid_connection_option",
    ),
    ("psycopg port 99999", _psycopg(f"{KV.split()[0]} port=99999"), "invalid_connection_option"),
    ("psycopg unknown option", _psycopg(f"{KV} foo=bar"), "invalid_connection_option"),
    ("psycopg2 unknown option", _psycopg2(f"{KV} foo=bar"), "invalid_connection_option"),
    (
        "psycopg URI query",
        _psycopg(f"postgresql://u:{SECRET}@{H}/d?foo=1"),
        "invalid_connection_option",
    ),
    ("psycopg sslmode", _psycopg(f"{KV} sslmode=bogus"), "invalid_connection_option"),
    ("psycopg2 sslmode", _psycopg2(f"{KV} sslmode=bogus"), "invalid_connection_option"),
    (
        "psycopg target_session_attrs",
        _psycopg(f"{KV} target_session_attrs=zz"),
        "invalid_connection_option",
    ),
    ("psycopg keepalives kwarg", _psycopg(KV, keepalives="abc"), "invalid_connection_option"),
    (
        "psycopg2 service",
        _psycopg2(f"{KV} service=outlast-no-such-service"),
        "invalid_connection_option",
    ),
    ("psycopg missing =", _psycopg(f"{KV} password"), "bad_dsn"),
    ("psycopg2 missing =", _psycopg2(f"{KV} password=se {SECRET}"), "bad_dsn"),
    ("psycopg unterminated quote", _psycopg(f"{KV} password='{SECRET}"), "bad_dsn"),
    ("psycopg invalid URI", _psycopg(f"postgresql://u:{SECRET}@[::1/d"), "bad_dsn"),
    ("psycopg2 invalid URI", _psycopg2(f"postgresql://u:{SECRET}@[::1/d"), "bad_dsn"),
    ("psycopg percent-encoding", _psycopg(f"postgresql://u:{SECRET}%zz@{H}/d"), "bad_dsn"),
    ("psycopg raw space in URL", _psycopg(f"postgresql://u:{SECRET} x@{H}/d"), "bad_dsn"),
    ("psycopg ports vs hosts", _psycopg(f"host=127.0.0.1,127.0.0.2 port={PORT},1,2"), "bad_dsn"),
    ("psycopg SQLAlchemy URL", _psycopg(f"postgresql+psycopg://u:{SECRET}@{H}/d"), "bad_dsn"),
    (
        "SQLAlchemy+psycopg sslmode",
        _sqlalchemy(f"postgresql+psycopg://u:{SECRET}@{H}/d?sslmode=bogus"),
        "invalid_connection_option",
    ),
    (
        "SQLAlchemy+psycopg2 option",
        _sqlalchemy(f"postgresql+psycopg2://u:{SECRET}@{H}/d?foo=bar"),
        "invalid_connection_option",
    ),
    (
        "SQLAlchemy+psycopg keepalives",
        _sqlalchemy(f"postgresql+psycopg://u:{SECRET}@{H}/d", connect_args={"keepalives": "abc"}),
        "invalid_connection_option",
    ),
    (
        "SQLAlchemy URL port abc",
        _sqlalchemy(f"postgresql+psycopg://u:{SECRET}@127.0.0.1:abc/d"),
        "bad_dsn",
    ),
    ("asyncpg port abc", _asyncpg(f"postgresql://u:{SECRET}@127.0.0.1:abc/d"), "bad_dsn"),
    ("asyncpg invalid IPv6", _asyncpg(f"postgresql://u:{SECRET}@[::1/d"), "bad_dsn"),
    ("asyncpg key=value DSN", _asyncpg(f"{KV} password={SECRET}"), "bad_dsn"),
    (
        "asyncpg sslmode",
        _asyncpg(f"postgresql://u:{SECRET}@{H}/d?sslmode=bogus"),
        "invalid_connection_option",
    ),
    (
        "asyncpg port 99999",
        _asyncpg(f"postgresql://u:{SECRET}@127.0.0.1:99999/d"),
        "invalid_connection_option",
    ),
]


@pytest.mark.parametrize(("what", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_real_configuration_errors_are_permanent(
    what: str, make: Callable[[], object], reason: str
) -> None:
    exc = capture(make)
    fault = outlast.classify(exc)
    assert fault is not None, f"{what}: {type(exc).__name__} not classified"
    assert (fault.kind, fault.reason, fault.transient, fault.phase) == (
        FaultKind.PERMANENT,
        reason,
        False,
        "connect",
    ), f"{what}: {fault}"
    assert SECRET not in fault.message and SECRET[3:] not in fault.message


def test_an_applications_own_value_error_is_not_a_database_fault() -> None:
    assert outlast.classify(capture(lambda: int("abc"))) is None
    assert outlast.classify(ValueError("invalid integer value")) is None
    # asyncpg's configuration error class means a database-client problem even when
    # built by hand; a plain ValueError with asyncpg's wording does not.
    assert outlast.classify(ValueError("invalid DSN: scheme is expected")) is None


def test_a_refusal_is_still_unavailable() -> None:
    fault = outlast.classify(capture(_psycopg(f"{KV}")))
    assert fault is not None
    assert (fault.kind, fault.reason) == (FaultKind.UNAVAILABLE, "connection_refused")


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://u:{SECRET}@127.0.0.1:abc/d",
        f"{KV} foo=bar",
        f"{KV} sslmode=bogus",
        f"{KV} password=se {SECRET}",
    ],
    # Stable ids: the port is picked at import, and pytest-xdist's workers must
    # collect the same names.
    ids=["url_bad_port", "unknown_option", "bad_sslmode", "space_in_password"],
)
def test_the_guard_neither_retries_nor_counts_a_bad_dsn(dsn: str) -> None:
    events: list[outlast.Event] = []
    guard = outlast.Guard(
        "cfg", breaker=outlast.Breaker(failure_threshold=1), listeners=[events.append]
    )
    calls = 0

    def connect() -> None:
        nonlocal calls
        calls += 1
        psycopg.connect(dsn, connect_timeout=2).close()

    for _ in range(3):
        with pytest.raises(psycopg.Error):
            guard.call(connect, idempotent=True)
    assert calls == 3  # one try per call, no retry
    assert guard.breaker_state == "closed"
    assert guard.state.up
    assert events == []


def test_a_bad_dsn_as_the_half_open_probe_does_not_close_the_breaker() -> None:
    # Nothing reached the database, so the probe proved nothing: the breaker stays
    # half-open (no BreakerClosed / DatabaseRecovered) and the next call may probe.
    clock, events = ManualClock(), []
    guard = outlast.Guard(
        "cfg",
        retry=outlast.Retry(attempts=1),
        breaker=outlast.Breaker(failure_threshold=1, open_for=1.0),
        listeners=[events.append],
        clock=clock,
    )
    guard.record_failure(capture(_psycopg(KV)))
    assert guard.breaker_state == "open"
    clock.advance(1.5)
    with pytest.raises(psycopg.OperationalError):
        guard.call(_psycopg(f"{KV} sslmode=bogus"))
    assert guard.breaker_state == "half_open"
    assert not guard.state.up
    assert not [
        e for e in events if isinstance(e, outlast.BreakerClosed | outlast.DatabaseRecovered)
    ]
    assert guard.call(lambda: 42) == 42  # the probe slot was freed
    assert guard.breaker_state == "closed"
