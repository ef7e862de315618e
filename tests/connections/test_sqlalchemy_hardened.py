"""outlast.sqlalchemy against a real server, through the chaos proxy where faults are needed."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conn_kit import restart_under_traffic

import outlast
from outlast._core.connections.hardening import PRESETS
from outlast.sqlalchemy import create_async_engine, create_engine, hardening_of, install

SELECT_1 = sa.text("SELECT 1")
DEFAULT_BUDGET = PRESETS["default"].check_budget  # ping 1.5 s + connect 3 s
SLACK = 1.5  # a shared 2-core machine


def _show(conn: sa.Connection, name: str) -> str:
    return str(conn.execute(sa.text(f"SHOW {name}")).scalar())


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("preset", ["default", "pgbouncer"])
def test_sync_engine_applies_the_session_settings(
    pg_database: Any, driver: str, preset: str
) -> None:
    engine = create_engine(pg_database.url(driver=driver), preset=preset)
    try:
        for _ in range(2):  # a fresh and a pooled (pinged) connection
            with engine.connect() as conn:
                assert _show(conn, "statement_timeout") == "30s"
                assert _show(conn, "idle_in_transaction_session_timeout") == "1min"
                assert _show(conn, "application_name") == "outlast"
                conn.rollback()  # the SET survives the pool's rollback-on-return
        assert hardening_of(engine) == PRESETS[preset]
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
@pytest.mark.parametrize("preset", ["default", "pgbouncer"])
async def test_async_engine_applies_the_session_settings(
    pg_database: Any, driver: str, preset: str
) -> None:
    custom = PRESETS[preset].replace(statement_timeout=7)
    engine = create_async_engine(pg_database.url(driver=driver), preset=custom)
    try:
        for _ in range(2):
            async with engine.connect() as conn:
                value = (await conn.execute(sa.text("SHOW statement_timeout"))).scalar()
                assert value == "7s"
                await conn.rollback()
    finally:
        await engine.dispose()


async def test_asyncpg_sockets_get_keepalives_and_user_timeout(pg_database: Any) -> None:
    engine = create_async_engine(pg_database.url(driver="asyncpg"))
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            sock = raw.driver_connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
    finally:
        await engine.dispose()


def test_install_hardens_an_existing_engine(pg_database: Any) -> None:
    engine = sa.create_engine(pg_database.url(driver="psycopg"))
    guard = outlast.Guard("installed")
    assert install(engine, guard, preset="pgbouncer") is engine
    try:
        with engine.connect() as conn:
            assert _show(conn, "statement_timeout") == "30s"
        with pytest.raises(outlast.ConfigurationError, match="already installed"):
            install(engine, guard)
    finally:
        engine.dispose()


def test_configuration_errors_never_show_the_password() -> None:
    with pytest.raises(outlast.ConfigurationError) as info:
        create_engine("postgresql+psycopg://app:hunter2-secret@db:notaport/app")
    assert "hunter2" not in str(info.value)
    with pytest.raises(outlast.ConfigurationError, match="PostgreSQL"):
        create_engine("sqlite://")
    with pytest.raises(outlast.ConfigurationError, match="unknown preset"):
        create_engine("postgresql+psycopg://app:hunter2@db/app", preset="nope")
    with pytest.raises(outlast.ConfigurationError, match="rejects startup options"):
        create_engine(
            "postgresql+psycopg://app:hunter2@ep-x-pooler.aws.neon.tech/app",
            connect_args={"options": "-c statement_timeout=5000"},
        )
    with pytest.raises(outlast.ConfigurationError, match="rejects startup parameters"):
        create_async_engine(
            "postgresql+asyncpg://app:hunter2@db/app",
            preset="pgbouncer",
            connect_args={"server_settings": {"statement_timeout": "5000"}},
        )
    with pytest.raises(outlast.ConfigurationError, match="create_async_engine"):
        create_engine("postgresql+asyncpg://app@db/app")


def test_user_startup_options_win_over_the_preset(pg_database: Any) -> None:
    engine = create_engine(
        pg_database.url(driver="psycopg"),
        connect_args={"options": "-c statement_timeout=4000"},
    )
    try:
        with engine.connect() as conn:
            assert _show(conn, "statement_timeout") == "4s"
            assert _show(conn, "idle_in_transaction_session_timeout") == "1min"
    finally:
        engine.dispose()


# --------------------------------------------------------------- chaos proxy


@pytest.mark.parametrize("kind", ["blackhole", "freeze"])
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sync_engine_fails_fast_on_a_dead_link(
    pg_proxy: Any, pg_database: Any, db_outage: Any, driver: str, kind: str
) -> None:
    guard = outlast.Guard("sa-sync")
    engine = create_engine(pg_proxy.url(pg_database.name, driver=driver), guard=guard)
    try:
        with engine.connect() as conn:  # a pooled connection that will go stale
            conn.execute(SELECT_1)
        with db_outage(kind):
            start = time.monotonic()
            with pytest.raises(sa.exc.OperationalError) as info, engine.connect() as conn:
                conn.execute(SELECT_1)
            elapsed = time.monotonic() - start
        print(f"sqlalchemy+{driver} {kind}: failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE
        assert elapsed < DEFAULT_BUDGET + SLACK
        assert not guard.state.up
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["blackhole", "freeze"])
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_async_engine_fails_fast_on_a_dead_link(
    pg_proxy: Any, pg_database: Any, db_outage: Any, driver: str, kind: str
) -> None:
    guard = outlast.Guard("sa-async")
    engine = create_async_engine(pg_proxy.url(pg_database.name, driver=driver), guard=guard)
    try:
        async with engine.connect() as conn:
            await conn.execute(SELECT_1)
        with db_outage(kind):
            start = time.monotonic()
            with pytest.raises(Exception) as info:  # noqa: PT011 - classified below
                async with engine.connect() as conn:
                    await conn.execute(SELECT_1)
            elapsed = time.monotonic() - start
        print(f"sqlalchemy+{driver} (async) {kind}: failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value)
        assert fault is not None and fault.kind is outlast.FaultKind.UNAVAILABLE, info.value
        assert elapsed < DEFAULT_BUDGET + SLACK
        assert not guard.state.up
    finally:
        await engine.dispose()


def test_a_statement_in_flight_on_a_frozen_link_hits_the_client_deadline(
    pg_proxy: Any, pg_database: Any, db_outage: Any
) -> None:
    preset = PRESETS["default"].replace(statement_timeout=1.0, deadline_grace=1.0)
    engine = create_engine(pg_proxy.url(pg_database.name), preset=preset)
    try:
        with engine.connect() as conn:
            conn.execute(SELECT_1)  # checked out and pinged before the freeze
            with db_outage("freeze"):
                start = time.monotonic()
                with pytest.raises(sa.exc.OperationalError) as info:
                    conn.execute(SELECT_1)
                elapsed = time.monotonic() - start
            assert conn.invalidated
        fault = outlast.classify(info.value)
        # The preset's own client statement timeout fired: the server did not
        # even cancel the statement, so it is not answering (an outage).
        assert fault is not None
        assert (fault.kind, fault.reason) == (outlast.FaultKind.UNAVAILABLE, "server_unresponsive")
        assert 1.5 < elapsed < 2.0 + SLACK + 1.0
        with engine.connect() as conn:  # the pool recovered by itself
            assert conn.execute(SELECT_1).scalar() == 1
    finally:
        engine.dispose()


# ------------------------------------------------------------------- restart


def _request(engine: sa.Engine) -> Callable[[], None]:
    def request() -> None:
        with engine.connect() as conn:
            conn.execute(SELECT_1)

    return request


@pytest.mark.destructive
def test_no_request_meets_a_stale_connection_after_a_restart(
    pg_control: Any, pg_database: Any
) -> None:
    guard = outlast.Guard("restart")
    hardened = create_engine(pg_database.url(), guard=guard, pool_size=5)
    try:
        seen = restart_under_traffic(pg_control, _request(hardened))
    finally:
        hardened.dispose()
    assert seen.traffic.successes_after(seen.up_at) >= 30
    # Every request of the run counts, as for the plain engine below.
    assert seen.traffic.stale_failures() == []


@pytest.mark.destructive
def test_a_plain_engine_meets_stale_connections_after_a_restart(
    pg_control: Any, pg_database: Any
) -> None:
    plain = sa.create_engine(pg_database.url(), pool_size=5)
    try:
        seen = restart_under_traffic(pg_control, _request(plain))
    finally:
        plain.dispose()
    assert seen.traffic.successes_after(seen.up_at) >= 30
    # The same window as the hardened engine above: the whole run.
    stale = seen.traffic.stale_failures()
    assert len(stale) >= 1
    assert all(o.started >= seen.down_at for o in stale)  # met after the stop, not killed by it


def test_other_pool_classes_are_accepted(pg_database: Any) -> None:
    engine = create_engine(pg_database.url(), poolclass=sa.pool.NullPool)
    try:
        for _ in range(2):
            with engine.connect() as conn:
                assert _show(conn, "statement_timeout") == "30s"
    finally:
        engine.dispose()


# ------------------------------------------------------ COMMIT on a frozen link

FROZEN_COMMIT = outlast.Hardening(statement_timeout=1.0, deadline_grace=1.0)  # 2 s deadline


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sync_commit_on_a_frozen_link_is_bounded(
    pg_proxy: Any, pg_database: Any, driver: str
) -> None:
    """COMMIT goes through the dialect, not a cursor: it must have a deadline too."""
    engine = create_engine(pg_proxy.url(pg_database.name, driver=driver), preset=FROZEN_COMMIT)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS frozen_commit (x int)")
        conn = engine.connect()
        conn.exec_driver_sql("INSERT INTO frozen_commit VALUES (1)")
        pg_proxy.add_fault("freeze")
        start = time.monotonic()
        try:
            with pytest.raises(sa.exc.OperationalError) as info:
                conn.commit()
            elapsed = time.monotonic() - start
        finally:
            pg_proxy.clear()
            conn.invalidate()
            conn.close()
        print(f"sqlalchemy+{driver}: frozen COMMIT failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value, during_commit=True)
        assert fault is not None and fault.kind is outlast.FaultKind.COMMIT_UNKNOWN
        assert 1.5 < elapsed < FROZEN_COMMIT.client_statement_timeout + SLACK
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_async_commit_on_a_frozen_link_is_bounded(
    pg_proxy: Any, pg_database: Any, driver: str
) -> None:
    engine = create_async_engine(
        pg_proxy.url(pg_database.name, driver=driver), preset=FROZEN_COMMIT
    )
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS frozen_commit (x int)")
        conn = await engine.connect()
        await conn.exec_driver_sql("INSERT INTO frozen_commit VALUES (1)")
        pg_proxy.add_fault("freeze")
        start = time.monotonic()
        try:
            with pytest.raises(Exception) as info:  # noqa: PT011 - classified below
                await conn.commit()
            elapsed = time.monotonic() - start
        finally:
            pg_proxy.clear()
            await conn.invalidate()
            await conn.close()
        print(f"sqlalchemy+{driver} (async): frozen COMMIT failed after {elapsed:.2f} s")
        fault = outlast.classify(info.value, during_commit=True)
        assert fault is not None and fault.kind is outlast.FaultKind.COMMIT_UNKNOWN, info.value
        assert 1.5 < elapsed < FROZEN_COMMIT.client_statement_timeout + SLACK
    finally:
        await engine.dispose()
