"""Pure logic of the connection hardening: presets, libpq parameters, session setup, deadlines."""

from __future__ import annotations

import random
import socket
import threading
import time
from datetime import timedelta

import pytest

import outlast
from outlast._core.connections.hardening import (
    PRESETS,
    Hardening,
    check_startup_options,
    is_pooler_host,
    is_restart_fault,
    jittered_lifetime,
    libpq_params,
    preset_for,
    session_setup_sql,
    without_settings,
)
from outlast._core.connections.socket_deadline import SocketDeadline

NEON_POOLER = "postgresql://app:s3cret-pw@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/db"
NEON_DIRECT = "postgresql://app:s3cret-pw@ep-cool-darkness-123456.us-east-2.aws.neon.tech/db"


def test_default_preset_sends_timeouts_as_startup_options() -> None:
    params = libpq_params(PRESETS["default"])
    assert params["connect_timeout"] == "3"
    assert params["keepalives"] == "1"
    assert params["tcp_user_timeout"] == "10000"
    assert params["options"] == (
        "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000"
    )
    assert session_setup_sql(PRESETS["default"]) == []


def test_pgbouncer_preset_uses_set_instead_of_startup_options() -> None:
    preset = PRESETS["pgbouncer"]
    assert "options" not in libpq_params(preset)
    assert session_setup_sql(preset) == [
        "SET statement_timeout = 30000",
        "SET idle_in_transaction_session_timeout = 60000",
    ]


def test_a_pooler_host_switches_startup_options_off_by_itself() -> None:
    assert not preset_for(NEON_POOLER).startup_options
    assert not preset_for(NEON_POOLER, "neon").startup_options
    assert preset_for(NEON_POOLER, "neon").connect_timeout == 10.0
    assert preset_for(NEON_DIRECT, "neon").startup_options
    assert not preset_for("ep-x-y-pooler.eu-central-1.aws.neon.tech").startup_options
    assert not preset_for(
        "host=ep-x-pooler.aws.neon.tech port=5432 dbname=app user=app"
    ).startup_options


def test_pgbouncer_port_alone_does_not_switch_presets() -> None:
    assert preset_for("host=db.internal port=6432 dbname=app").startup_options
    assert preset_for("postgresql://u@db.internal:6432/app") == PRESETS["default"]


@pytest.mark.parametrize(
    ("host", "pooler"),
    [
        ("ep-a-b-pooler.region.aws.neon.tech", True),
        ("EP-A-B-POOLER.region.aws.neon.tech", True),
        ("ep-a-b.region.aws.neon.tech", False),
        ("db.example.com,ep-a-pooler.neon.tech", True),
        ("my.pooler-less.example.com", False),  # -pooler in a later label proves nothing
        ("", False),
        (None, False),
    ],
)
def test_is_pooler_host(host: str | None, pooler: bool) -> None:
    assert is_pooler_host(host) is pooler


def test_presets_are_frozen_values_and_replace_validates() -> None:
    default = PRESETS["default"]
    with pytest.raises(AttributeError):
        default.connect_timeout = 99  # type: ignore[misc]
    shorter = default.replace(statement_timeout=timedelta(seconds=5), ping_timeout=0.5)
    assert shorter.statement_timeout == 5.0
    assert default.statement_timeout == 30.0
    assert shorter.client_statement_timeout == 7.0
    with pytest.raises(outlast.ConfigurationError, match="unknown hardening option"):
        default.replace(conect_timeout=3)


@pytest.mark.parametrize(
    "changes",
    [
        {"connect_timeout": -1},
        {"connect_timeout": 0},
        {"ping_timeout": float("nan")},
        {"statement_timeout": float("inf")},
        {"keepalives_idle": 0},
        {"keepalives_count": 2.5},
        {"max_lifetime_jitter": 1.0},
        {"pool_timeout": "5"},
        {"tcp_user_timeout": True},
    ],
)
def test_invalid_options_are_configuration_errors(changes: dict[str, object]) -> None:
    with pytest.raises(outlast.ConfigurationError) as info:
        Hardening(**changes)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_unknown_preset_and_malformed_dsn_never_echo_the_password() -> None:
    with pytest.raises(outlast.ConfigurationError, match="unknown preset 'turbo'"):
        preset_for(NEON_DIRECT, "turbo")
    with pytest.raises(outlast.ConfigurationError) as info:
        preset_for("postgresql://app:s3cret-pw@db:notaport/app")
    assert "s3cret-pw" not in str(info.value)


def test_none_leaves_the_server_setting_alone_and_zero_turns_it_off() -> None:
    preset = PRESETS["pgbouncer"].replace(
        statement_timeout=None, idle_in_transaction_session_timeout=0
    )
    assert session_setup_sql(preset) == ["SET idle_in_transaction_session_timeout = 0"]
    assert preset.client_statement_timeout is None


def test_libpq_connect_timeout_is_whole_seconds_and_at_least_two() -> None:
    assert libpq_params(Hardening(connect_timeout=0.5))["connect_timeout"] == "2"
    assert libpq_params(Hardening(connect_timeout=4.2))["connect_timeout"] == "5"


def test_startup_options_from_the_user() -> None:
    default = PRESETS["default"]
    names = check_startup_options(
        "-c statement_timeout=5s --lock-timeout=3s -cwork_mem=4MB", default
    )
    assert names == {"statement_timeout", "lock_timeout", "work_mem"}
    assert without_settings(default, names).statement_timeout is None
    assert without_settings(default, names).idle_in_transaction_session_timeout == 60.0
    with pytest.raises(outlast.ConfigurationError, match="rejects startup options"):
        check_startup_options("-c statement_timeout=5s", PRESETS["pgbouncer"])
    assert check_startup_options(None, PRESETS["pgbouncer"]) == set()


def test_jittered_lifetime_only_shortens_and_spreads() -> None:
    preset = PRESETS["default"]
    rng = random.Random(7)
    values = [jittered_lifetime(preset, rng) for _ in range(200)]
    assert all(preset.max_lifetime * 0.9 <= v <= preset.max_lifetime for v in values)
    assert max(values) - min(values) > preset.max_lifetime * 0.05


def test_restart_class_faults() -> None:
    def fault(sqlstate: str | None, reason: str) -> outlast.Fault:
        return outlast.Fault(outlast.FaultKind.UNAVAILABLE, reason, sqlstate, "statement", True, "")

    assert is_restart_fault(fault("57P01", "admin_shutdown"))
    assert is_restart_fault(fault("25006", "read_only_transaction"))
    assert is_restart_fault(fault(None, "connection_refused"))
    assert is_restart_fault(fault("08006", "connection_lost"))
    assert not is_restart_fault(fault("53300", "too_many_connections"))
    assert not is_restart_fault(None)


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    with server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    return client, peer


def test_socket_deadline_wakes_a_blocked_reader() -> None:
    deadline = SocketDeadline()
    client, peer = _socket_pair()
    with client, peer:
        token = deadline.arm(client.fileno(), 0.3)
        start = time.monotonic()
        client.settimeout(30)
        data = client.recv(10)  # the peer never sends: only the deadline ends this
        elapsed = time.monotonic() - start
        assert data == b""
        assert 0.2 < elapsed < 10
        assert deadline.disarm(token) is True
        assert deadline.armed == 0


def test_a_disarmed_deadline_never_fires() -> None:
    deadline = SocketDeadline()
    client, peer = _socket_pair()
    with client, peer:
        tokens = [deadline.arm(client.fileno(), 0.2) for _ in range(600)]
        for token in tokens:
            assert deadline.disarm(token) is False
        fired = threading.Event()
        # A later deadline on another socket proves the thread got past ours.
        other_client, other_peer = _socket_pair()
        with other_client, other_peer:
            other = deadline.arm(other_client.fileno(), 0.4)
            other_client.settimeout(30)
            assert other_client.recv(1) == b""
            fired.set()
            assert deadline.disarm(other)
        peer.sendall(b"x")
        client.settimeout(5)
        assert client.recv(1) == b"x"  # still open and working
        assert fired.is_set()
