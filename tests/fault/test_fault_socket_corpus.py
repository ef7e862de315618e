"""Real faults from real sockets on loopback, for every driver.

No Postgres server is needed here: a free port gives "connection refused", a
listening socket that never answers gives a connect timeout, ``.invalid`` host
names give DNS failures, and `LoginRejecter` (a real socket server speaking the
Postgres protocol) rejects logins with the ErrorResponse a real server or
Neon's proxy sends, so each driver builds its exception itself.
"""

from __future__ import annotations

import pytest
from fault_kit import (
    DRIVERS,
    blackhole,
    classify_real,
    connect_and_query,
    free_port,
    login_rejecter,
)

from outlast import FaultKind

PASSWORD = "Pw-s3cr3t-z9"

LOGIN_REJECTIONS = [
    # (severity, sqlstate, message, kind, reason)
    (
        "FATAL",
        "28P01",
        'password authentication failed for user "app"',
        FaultKind.PERMANENT,
        "auth_failed",
    ),
    ("FATAL", "57P03", "the database system is starting up", FaultKind.UNAVAILABLE, "starting_up"),
    (
        "FATAL",
        "57P03",
        "the database system is shutting down",
        FaultKind.UNAVAILABLE,
        "shutting_down",
    ),
    (
        "FATAL",
        "53300",
        "sorry, too many clients already",
        FaultKind.UNAVAILABLE,
        "too_many_connections",
    ),
    ("FATAL", "3D000", 'database "shop" does not exist', FaultKind.PERMANENT, "invalid_catalog"),
    # Neon's proxy: everything arrives as XX000, the text decides.
    (
        "ERROR",
        "XX000",
        "Control plane request failed: endpoint is disabled",
        FaultKind.UNAVAILABLE,
        "endpoint_disabled",
    ),
    (
        "ERROR",
        "XX000",
        "The endpoint has been disabled. Enable it using Neon API and retry.",
        FaultKind.UNAVAILABLE,
        "endpoint_disabled",
    ),
    (
        "ERROR",
        "XX000",
        "Couldn't connect to compute node",
        FaultKind.UNAVAILABLE,
        "compute_unreachable",
    ),
    (
        "ERROR",
        "XX000",
        "endpoint is temporarily unavailable",
        FaultKind.UNAVAILABLE,
        "endpoint_unavailable",
    ),
    (
        "ERROR",
        "XX000",
        "Your project has exceeded the data transfer quota. Upgrade your plan to increase limits.",
        FaultKind.PERMANENT,
        "quota_exceeded",
    ),
    (
        "ERROR",
        "XX000",
        "Your account or project has exceeded the compute time quota. Upgrade your plan to "
        "increase limits.",
        FaultKind.PERMANENT,
        "quota_exceeded",
    ),
]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("severity", "code", "message", "kind", "reason"),
    LOGIN_REJECTIONS,
    ids=[f"{c}-{r}" for _, c, _, _, r in LOGIN_REJECTIONS],
)
def test_login_rejected_by_real_error_response(
    driver: str, severity: str, code: str, message: str, kind: FaultKind, reason: str
) -> None:
    with login_rejecter(severity, code, message) as server:
        fault, _ = classify_real(
            lambda: connect_and_query(
                driver, "127.0.0.1", server.port, timeout=5, password=PASSWORD
            )
        )
        assert server.startups >= 1
    assert fault.kind is kind
    assert fault.reason == reason
    assert fault.phase == "connect"
    assert fault.before_statement
    assert fault.transient is (kind is FaultKind.UNAVAILABLE)
    # asyncpg keeps the SQLSTATE; libpq drops it for login errors.
    assert fault.sqlstate in (code, None)
    if "asyncpg" in driver:
        assert fault.sqlstate == code
    assert PASSWORD not in fault.message
    assert message.split(".")[0][:30] in fault.message


@pytest.mark.parametrize("driver", DRIVERS)
def test_connection_refused_on_a_free_loopback_port(driver: str) -> None:
    port = free_port()
    fault, _ = classify_real(
        lambda: connect_and_query(driver, "127.0.0.1", port, password=PASSWORD)
    )
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.UNAVAILABLE,
        "connection_refused",
        "connect",
    )
    assert fault.transient
    assert fault.sqlstate is None
    assert PASSWORD not in fault.message


@pytest.mark.parametrize("driver", DRIVERS)
def test_connect_timeout_on_a_socket_that_never_answers(driver: str) -> None:
    with blackhole() as port:
        fault, _ = classify_real(
            lambda: connect_and_query(driver, "127.0.0.1", port, timeout=1, password=PASSWORD)
        )
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.UNAVAILABLE,
        "connect_timeout",
        "connect",
    )
    assert fault.transient
    # during_commit cannot turn a connect-time failure into COMMIT_UNKNOWN
    with blackhole() as port:
        fault2, _ = classify_real(
            lambda: connect_and_query(driver, "127.0.0.1", port, timeout=1),
            during_commit=True,
        )
    assert fault2.kind is FaultKind.UNAVAILABLE


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("host", ["nonexistent.invalid", "ep-cool-darkness-123.neon.tech.invalid"])
def test_dns_failure(driver: str, host: str) -> None:
    fault, _ = classify_real(lambda: connect_and_query(driver, host, 5432, timeout=5))
    # A neon.tech host name in the error does not make it "endpoint disabled".
    assert (fault.kind, fault.reason, fault.phase) == (
        FaultKind.UNAVAILABLE,
        "dns_failure",
        "connect",
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_neon_host_name_in_an_unrelated_login_error_proves_nothing(driver: str) -> None:
    text = "unexpected failure talking to ep-cool-x.us-east-2.aws.neon.tech"
    with login_rejecter("ERROR", "XX000", text) as server:
        fault, _ = classify_real(lambda: connect_and_query(driver, "127.0.0.1", server.port))
    assert fault.phase == "connect"
    if "asyncpg" in driver:  # the SQLSTATE survives: a generic internal error
        assert (fault.kind, fault.reason, fault.sqlstate) == (
            FaultKind.PERMANENT,
            "internal_error",
            "XX000",
        )
    else:  # libpq drops the SQLSTATE of login errors: an unknown failure to connect
        assert (fault.kind, fault.reason) == (FaultKind.UNAVAILABLE, "connection_failed")
