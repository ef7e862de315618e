"""The protocol faults as real drivers see them: psycopg 3, psycopg2, asyncpg and psql.

The proxy sits in front of the session's embedded PostgreSQL (``pg_proxy``);
each test asserts the error the fault promises and the reason `outlast.classify`
gives it. The network faults and ``cut_after`` are in test_chaos_matrix.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import psycopg2
import pytest
from pg_clients import wait_for_query

import outlast
from outlast.testing._chaos_fixtures import ProxiedServer

LOGIN_FAULTS = [
    # preset, expected severity, SQLSTATE, message fragment, classify reason
    ("starting_up", "FATAL", "57P03", "the database system is starting up", "starting_up"),
    (
        "too_many_connections",
        "FATAL",
        "53300",
        "sorry, too many clients already",
        "too_many_connections",
    ),
    (
        "neon_endpoint_disabled",
        "ERROR",
        "XX000",
        "Control plane request failed: endpoint is disabled",
        "endpoint_disabled",
    ),
    (
        "neon_endpoint_disabled_api",
        "ERROR",
        "XX000",
        "The endpoint has been disabled. Enable it using Neon API and retry.",
        "endpoint_disabled",
    ),
]


def psycopg3_connect(proxy: ProxiedServer, timeout: int = 10) -> Any:
    return psycopg.connect(proxy.dsn(connect_timeout=timeout))


def psycopg2_connect(proxy: ProxiedServer, timeout: int = 10) -> Any:
    return psycopg2.connect(proxy.dsn(connect_timeout=timeout))


def asyncpg_connect(proxy: ProxiedServer, timeout: int = 10) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(
            host=proxy.host,
            port=proxy.port,
            user="postgres",
            database="postgres",
            timeout=timeout,
        )
        await conn.close()

    return asyncio.run(go())


CONNECTORS: dict[str, Callable[..., Any]] = {
    "psycopg": psycopg3_connect,
    "psycopg2": psycopg2_connect,
    "asyncpg": asyncpg_connect,
}


def psql(
    proxy: ProxiedServer, sql: str = "select 1", timeout: int = 10
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGCONNECT_TIMEOUT": str(timeout)}
    return subprocess.run(
        [str(proxy.server.bin_dir / "psql"), "-X", "-w", "-d", proxy.dsn(), "-c", sql],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def reason_of(exc: BaseException) -> str | None:
    fault = outlast.classify(exc)
    return None if fault is None else fault.reason


def test_proxy_passes_queries_through(pg_proxy: ProxiedServer) -> None:
    with psycopg3_connect(pg_proxy) as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)
    assert psql(pg_proxy, "select 40 + 2").stdout.strip().splitlines()[2].strip() == "42"


@pytest.mark.parametrize("driver", sorted(CONNECTORS))
@pytest.mark.parametrize(("preset", "severity", "code", "text", "reason"), LOGIN_FAULTS)
def test_reject_login(
    pg_proxy: ProxiedServer,
    driver: str,
    preset: str,
    severity: str,
    code: str,
    text: str,
    reason: str,
) -> None:
    with pg_proxy.fault("reject_login", preset=preset):
        with pytest.raises(Exception) as info:
            CONNECTORS[driver](pg_proxy)
    exc = info.value
    assert text in str(exc)
    if driver == "asyncpg":
        assert isinstance(exc, asyncpg.PostgresError)
        assert exc.sqlstate == code and exc.severity == severity
    else:
        assert severity in str(exc)  # libpq reports login errors without a SQLSTATE
    assert reason_of(exc) == reason


@pytest.mark.parametrize(("preset", "severity", "code", "text", "reason"), LOGIN_FAULTS[:3])
def test_reject_login_psql(
    pg_proxy: ProxiedServer, preset: str, severity: str, code: str, text: str, reason: str
) -> None:
    with pg_proxy.fault("reject_login", preset=preset):
        result = psql(pg_proxy)
    assert result.returncode == 2
    assert f"{severity}:  {text}" in result.stderr


def test_reject_login_with_a_custom_error(pg_proxy: ProxiedServer) -> None:
    with pg_proxy.fault(
        "reject_login", severity="FATAL", sqlstate="28000", message="no pg_hba.conf entry for you"
    ):
        with pytest.raises(asyncpg.PostgresError) as info:
            asyncpg_connect(pg_proxy)
    assert info.value.sqlstate == "28000"
    assert "no pg_hba.conf entry for you" in str(info.value)


def _terminate_during(proxy: ProxiedServer, marker: str, run: Callable[[], Any]) -> BaseException:
    caught: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    wait_for_query(proxy, marker)
    proxy.add_fault("terminate")
    thread.join(60)
    assert not thread.is_alive()
    assert caught, "the query survived terminate"
    return caught[0]


def test_terminate_psycopg_idle_session(pg_proxy: ProxiedServer) -> None:
    with psycopg3_connect(pg_proxy) as conn:
        conn.execute("select 1")
        pg_proxy.add_fault("terminate")
        with pytest.raises(psycopg.errors.AdminShutdown) as info:
            conn.execute("select 1")
    assert info.value.sqlstate == "57P01"
    assert reason_of(info.value) == "admin_shutdown"


def test_terminate_psycopg_in_flight(pg_proxy: ProxiedServer) -> None:
    conn = psycopg3_connect(pg_proxy)
    try:
        exc = _terminate_during(
            pg_proxy, "pg_sleep(4.1)", lambda: conn.execute("select pg_sleep(4.1)")
        )
    finally:
        conn.close()
    assert isinstance(exc, psycopg.errors.AdminShutdown)
    assert reason_of(exc) == "admin_shutdown"


def test_terminate_psycopg2_in_flight(pg_proxy: ProxiedServer) -> None:
    conn = psycopg2_connect(pg_proxy)
    try:
        exc = _terminate_during(
            pg_proxy, "pg_sleep(4.2)", lambda: conn.cursor().execute("select pg_sleep(4.2)")
        )
    finally:
        conn.close()
    # Same as a real pg_terminate_backend(): libpq reads the FATAL message as the
    # connection dies and psycopg2 reports only the lost connection.
    assert isinstance(exc, psycopg2.OperationalError)
    assert "server closed the connection unexpectedly" in str(exc)
    assert reason_of(exc) == "connection_lost"


def test_terminate_asyncpg_in_flight(pg_proxy: ProxiedServer) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(
            host=pg_proxy.host, port=pg_proxy.port, user="postgres", database="postgres", timeout=10
        )
        try:
            await conn.fetchval("select pg_sleep(4.3)")
        finally:
            await conn.close()

    exc = _terminate_during(pg_proxy, "pg_sleep(4.3)", lambda: asyncio.run(go()))
    # Same as a real pg_terminate_backend(): the FATAL text rides on the lost connection.
    assert isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError)
    assert "terminating connection due to administrator command" in str(exc)
    assert reason_of(exc) == "admin_shutdown"


def test_terminate_psql_in_flight(pg_proxy: ProxiedServer) -> None:
    results: list[subprocess.CompletedProcess[str]] = []
    exc = _terminate_during(
        pg_proxy,
        "pg_sleep(4.4)",
        lambda: (results.append(psql(pg_proxy, "select pg_sleep(4.4)")), 1 / 0),
    )
    assert isinstance(exc, ZeroDivisionError)  # psql itself returned
    assert results[0].returncode == 2
    assert "FATAL:  terminating connection due to administrator command" in results[0].stderr


def test_sslrequest_is_answered_n_and_tls_is_refused(pg_proxy: ProxiedServer) -> None:
    with pg_proxy.fault("reject_login", preset="starting_up"):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(pg_proxy.dsn(sslmode="require", connect_timeout=10))
    assert "server does not support SSL" in str(info.value)
