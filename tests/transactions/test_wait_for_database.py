"""`wait_for_database` and ``outlast wait`` against the real embedded server."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import outlast
from outlast import FaultKind
from outlast.testing import free_port
from outlast.testing.plugin import PgDatabase

FAST = outlast.Backoff(initial=0.1, cap=0.5)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outlast", "wait", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("driver", ["auto", "psycopg2", "asyncpg", "protocol"])
def test_ready_database_returns_at_once(pg_database: PgDatabase, driver: str) -> None:
    waited = outlast.wait_for_database(pg_database.dsn(), timeout=30, driver=driver)
    assert 0 <= waited < 30


@pytest.mark.destructive
@pytest.mark.parametrize("driver", ["psycopg", "protocol"])
def test_server_started_two_seconds_later_is_waited_for(pg_control: Any, driver: str) -> None:
    dsn = pg_control.dsn()
    pg_control.stop()
    seen: list[outlast.WaitAttempt] = []
    starter = threading.Timer(2.0, pg_control.start)
    starter.start()
    try:
        waited = outlast.wait_for_database(
            dsn, timeout=90, backoff=FAST, driver=driver, on_attempt=seen.append
        )
    finally:
        starter.join(120)
    assert waited >= 1.5
    assert seen, "the first checks must have failed"
    assert all(a.fault.kind is FaultKind.UNAVAILABLE for a in seen)


def test_missing_database_fails_at_once(pg_server: Any) -> None:
    for driver in ("psycopg", "protocol"):
        started = time.monotonic()
        with pytest.raises(outlast.DatabaseNotReady) as info:
            outlast.wait_for_database(
                pg_server.dsn("no_such_db"), timeout=60, backoff=FAST, driver=driver
            )
        assert time.monotonic() - started < 30
        assert info.value.fault is not None
        assert info.value.fault.kind is FaultKind.PERMANENT
        assert info.value.fault.reason == "invalid_catalog"
        assert "invalid_catalog" in str(info.value)


def test_rejected_role_fails_at_once(pg_server: Any) -> None:
    # Trust auth: an unknown role is refused with 28000 (auth_failed).
    with pytest.raises(outlast.DatabaseNotReady) as info:
        outlast.wait_for_database(
            pg_server.dsn(user="nobody_here", password="s3cret-pw"), timeout=60, driver="psycopg"
        )
    fault = info.value.fault
    assert fault is not None and fault.kind is FaultKind.PERMANENT
    assert fault.reason == "auth_failed"
    assert "s3cret-pw" not in str(info.value)


@pytest.mark.parametrize("driver", ["psycopg", "protocol"])
def test_unreachable_until_timeout_names_the_reason(driver: str) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=app password=s3cret-pw dbname=app"
    started = time.monotonic()
    with pytest.raises(outlast.DatabaseNotReady) as info:
        outlast.wait_for_database(dsn, timeout=1.5, backoff=FAST, driver=driver)
    assert time.monotonic() - started < 30
    assert info.value.fault is not None
    assert info.value.fault.reason == "connection_refused"
    assert "connection_refused" in str(info.value)
    assert "not ready after" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_malformed_dsn_is_a_value_error_without_the_password() -> None:
    with pytest.raises(ValueError) as info:
        outlast.wait_for_database("postgresql://app:s3cret-pw@db:notaport/app", timeout=1)
    assert "s3cret-pw" not in str(info.value)
    assert "port" in str(info.value)


def test_cli_exit_codes_and_one_line_messages(pg_database: PgDatabase, pg_server: Any) -> None:
    ok = _cli("--dsn", pg_database.dsn(), "--timeout", "30")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("outlast wait: database ready after")

    missing = _cli("--dsn", pg_server.dsn("no_such_db"), "--timeout", "30")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "invalid_catalog" in missing.stderr

    dsn = f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/app"
    down = _cli("--dsn", dsn, "--timeout", "1", "--quiet")
    assert down.returncode == 1
    assert len(down.stderr.strip().splitlines()) == 1
    assert "connection_refused" in down.stderr
    assert "s3cret-pw" not in down.stderr + down.stdout

    bad = _cli("--dsn", "postgresql://app:s3cret-pw@db:notaport/app")
    assert bad.returncode == 2
    assert "s3cret-pw" not in bad.stderr


@pytest.mark.parametrize("driver", ["auto", "psycopg", "psycopg2", "asyncpg", "protocol"])
@pytest.mark.parametrize("scheme", ["psycopg", "asyncpg", "psycopg2"])
def test_a_sqlalchemy_url_is_waited_for_like_any_dsn(
    pg_database: PgDatabase, driver: str, scheme: str
) -> None:
    # The form outlast.sqlalchemy and every SQLAlchemy app's DATABASE_URL use;
    # a driver argument in its query is the driver's business, not libpq's.
    url = pg_database.url(driver=scheme) + "?prepared_statement_cache_size=0"
    waited = outlast.wait_for_database(url, timeout=30, driver=driver)
    assert 0 <= waited < 30


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=1 require_auth=bogus password=s3cr3t!",  # refused by libpq itself
        "host=127.0.0.1 port=1 no_such_option=1",  # refused before any driver
        "postgresql://app:s3cr3t!@127.0.0.1:1/db?sslmode=bogus",
    ],
)
def test_a_bad_dsn_is_a_configuration_error_at_once(dsn: str) -> None:
    start = time.monotonic()
    with pytest.raises(outlast.ConfigurationError) as caught:
        outlast.wait_for_database(dsn, timeout=30, driver="psycopg")
    assert time.monotonic() - start < 5  # not waited for: no outage can fix it
    assert isinstance(caught.value, ValueError)
    assert "s3cr3t" not in str(caught.value)
    cli = _cli("--dsn", dsn, "--timeout", "30", "--driver", "psycopg")
    assert cli.returncode == 2, cli.stderr
    assert "s3cr3t" not in cli.stderr + cli.stdout
