"""The harness itself: a real server that stops, dies, restarts and reconfigures."""

from __future__ import annotations

import socket
import threading
import time

import psycopg
import pytest

from outlast.testing import EmbeddedPostgres


def _query(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_server_listens_on_loopback_tcp(pg_server: EmbeddedPostgres) -> None:
    assert pg_server.host == "127.0.0.1"
    assert _query(pg_server.dsn(), "SELECT 1") == 1
    assert _query(pg_server.dsn(), "SHOW unix_socket_directories") == ""


def test_databases_are_isolated(pg_database, pg_server: EmbeddedPostgres) -> None:
    with psycopg.connect(pg_database.dsn()) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    other = f"{pg_database.name}_other"
    with pg_server.database(other, template="outlast_template") as dsn:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)


def test_each_test_gets_a_new_database_1(pg_database) -> None:
    with psycopg.connect(pg_database.dsn()) as conn:
        assert conn.execute("SELECT to_regclass('marker')").fetchone() == (None,)
        conn.execute("CREATE TABLE marker (x int)")


def test_each_test_gets_a_new_database_2(pg_database) -> None:
    with psycopg.connect(pg_database.dsn()) as conn:
        assert conn.execute("SELECT to_regclass('marker')").fetchone() == (None,)
        conn.execute("CREATE TABLE marker (x int)")


@pytest.mark.destructive
def test_stop_refuses_then_start_accepts(pg_control: EmbeddedPostgres) -> None:
    pg_control.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((pg_control.host, pg_control.port), timeout=2).close()
    pg_control.start()
    assert _query(pg_control.dsn(), "SELECT 2") == 2


@pytest.mark.destructive
def test_kill_drops_live_sessions_and_restart_keeps_data(pg_control, pg_database) -> None:
    with psycopg.connect(pg_database.dsn()) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    conn = psycopg.connect(pg_database.dsn())
    errors: list[BaseException] = []

    def sleeper() -> None:
        try:
            conn.execute("SELECT pg_sleep(30)")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(0.5)
    old_port = pg_control.port
    pg_control.kill()
    t.join(10)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], psycopg.OperationalError)
    conn.close()
    assert not pg_control.is_running()
    pg_control.start()
    assert pg_control.port == old_port
    assert _query(pg_database.dsn(), "SELECT x FROM kept") == 42


@pytest.mark.destructive
def test_configure_applies_and_is_reset(pg_control: EmbeddedPostgres) -> None:
    pg_control.configure(max_connections=7)
    assert _query(pg_control.dsn(), "SHOW max_connections") == "7"
    pg_control.reset_configuration()
    assert _query(pg_control.dsn(), "SHOW max_connections") == "200"


def test_standalone_server_outside_pytest(tmp_path) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as server:
        assert server.psql("SELECT 40 + 2") == "42"
        assert server.url("x", driver="asyncpg").startswith("postgresql+asyncpg://postgres@")
    assert not server.is_running()


@pytest.mark.external
def test_external_server_when_configured(external_dsn: str) -> None:
    assert _query(external_dsn, "SELECT 1") == 1


def test_a_killed_test_process_leaves_no_server_behind(tmp_path) -> None:
    # A child interpreter starts a server, then dies by SIGKILL (as a test run
    # killed by a CI timeout would). The watchdog must take the server down.
    import os
    import signal
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from outlast.testing import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres()\n"
        "pg.start()\n"
        "print(pg.port, pg.base_dir, flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    port_text, base_dir = child.stdout.readline().split()
    child.stdout.close()
    port = int(port_text)
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the orphaned server still accepts connections")
    while time.monotonic() < deadline and os.path.exists(base_dir):
        time.sleep(0.1)
    assert not os.path.exists(base_dir)
