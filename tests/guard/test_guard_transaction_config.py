"""`Guard.transaction` / `atransaction` on a malformed conninfo string fail at once.

A bad DSN is a configuration bug: no connection is tried, nothing is retried,
the breaker and the listeners hear nothing, and the `ConfigurationError` says
what is wrong without the password.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import outlast
from outlast import ConfigurationError

SECRET = "Pw-s3cr3t-z9"
HALF = "z9s3cr3t"  # what an unquoted space leaves of a password: it looks like a keyword

BAD = [
    # (conninfo, what the message must say)
    (f"postgresql://u:{SECRET}@127.0.0.1:abc/d", "invalid port"),
    (f"postgresql://u:{SECRET}@127.0.0.1:99999/d", "invalid port"),
    (f"host=127.0.0.1 port=5432 password={SECRET} sslmode=bogus", "'sslmode' must be one of"),
    ("host=127.0.0.1 dbnme=shop", "unknown connection option 'dbnme'"),
    (f"host=127.0.0.1 password=se {HALF}=x", "unknown connection option (not shown"),
    (f"host=127.0.0.1 password=se {HALF}", "missing '='"),
    (f"host=127.0.0.1 password=se {SECRET}", "missing '='"),
    (f"host=127.0.0.1 password='{SECRET}", "unterminated"),
    (f"postgresql+psycopg://u:{SECRET}@127.0.0.1/d", "SQLAlchemy URL"),
    (f"postgresql://u:{SECRET}@[::1/d", "IPv6"),
]


def _guard(events: list[outlast.Event]) -> outlast.Guard:
    return outlast.Guard(
        "cfg", breaker=outlast.Breaker(failure_threshold=1), listeners=[events.append]
    )


def _check(info: pytest.ExceptionInfo[ConfigurationError], expected: str, elapsed: float) -> None:
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert expected in message, message
    assert SECRET not in message and SECRET[3:] not in message and HALF not in message
    assert elapsed < 0.5  # no connection attempt, no backoff


@pytest.mark.parametrize(("dsn", "expected"), BAD)
def test_transaction_on_a_malformed_dsn_raises_configuration_error(dsn: str, expected: str) -> None:
    events: list[outlast.Event] = []
    guard = _guard(events)
    calls = 0

    def work(conn: Any) -> None:
        nonlocal calls
        calls += 1

    start = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        guard.transaction(dsn, work)
    _check(info, expected, time.monotonic() - start)
    assert calls == 0 and events == []
    assert guard.breaker_state == "closed" and guard.state.up


@pytest.mark.parametrize(("dsn", "expected"), BAD)
async def test_atransaction_on_a_malformed_dsn_raises_configuration_error(
    dsn: str, expected: str
) -> None:
    events: list[outlast.Event] = []
    guard = _guard(events)
    calls = 0

    async def work(conn: Any) -> None:
        nonlocal calls
        calls += 1

    start = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        await guard.atransaction(dsn, work)
    _check(info, expected, time.monotonic() - start)
    assert calls == 0 and events == []
    assert guard.breaker_state == "closed" and guard.state.up


def test_a_well_formed_dsn_still_reaches_the_driver() -> None:
    # The check refuses only what libpq would refuse: a valid conninfo for a port
    # nobody listens on gets as far as connecting (and is retried as an outage).
    guard = outlast.Guard("cfg", retry=outlast.Retry(attempts=2, timeout=1.0), listeners=[])
    dsn = "postgresql://u:pw@127.0.0.1:1/d?sslmode=disable&connect_timeout=2&application_name=x"
    with pytest.raises(outlast.DatabaseUnavailable) as info:
        guard.transaction(dsn, lambda conn: None)
    assert info.value.fault is not None
    assert info.value.fault.reason == "connection_refused"
