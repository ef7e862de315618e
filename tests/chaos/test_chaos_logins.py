"""The proxy records each login's StartupMessage parameters (and never a password)."""

from __future__ import annotations

import json
import struct

import psycopg
import pytest
from chaos_kit import EchoServer, connect, wait_until

from outlast.chaos import AdminClient, AdminServer, Proxy
from outlast.testing._chaos_fixtures import ProxiedServer


def startup(**params: str) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!ii", 8 + len(body), 196608) + body


def password_message(password: str) -> bytes:
    body = password.encode() + b"\0"
    return b"p" + struct.pack("!I", len(body) + 4) + body


def test_a_real_login_is_recorded_per_connection_and_kept(pg_proxy: ProxiedServer) -> None:
    dsn = pg_proxy.dsn(application_name="recorded", options="-c statement_timeout=4321")
    with psycopg.connect(dsn) as conn:
        conn.execute("select 1")
        (link,) = pg_proxy.stats(connections=True)["links"]
        login = link["login"]
        assert login["user"] == "postgres" and login["database"] == "postgres"
        assert login["application_name"] == "recorded"
        assert login["options"] == "-c statement_timeout=4321"
    wait_until(lambda: pg_proxy.stats()["connections"] == 0, what="link closed")
    (entry,) = pg_proxy.logins()
    assert entry["parameters"] == login
    assert entry["connection"] == link["id"] and entry["client"] == link["client"]
    assert entry["rejected"] is None and entry["at"] > 0


def test_the_fixture_starts_each_test_with_no_logins(pg_proxy: ProxiedServer) -> None:
    assert pg_proxy.logins() == []


def test_rejected_logins_are_recorded_with_their_sqlstate(pg_proxy: ProxiedServer) -> None:
    with pg_proxy.fault("reject_login", preset="too_many_connections"):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_proxy.dsn(application_name="turned-away", sslmode="prefer"))
    (entry,) = pg_proxy.logins()
    assert entry["parameters"]["application_name"] == "turned-away"
    assert entry["rejected"] == "53300"


@pytest.mark.parametrize("track", [True, False])
def test_only_the_last_logins_are_kept(track: bool) -> None:
    with EchoServer() as echo, Proxy(upstream=echo.address, keep_logins=3, track=track) as p:
        for i in range(5):
            with connect(p.port) as s:
                s.sendall(startup(user=f"u{i}", database="d"))
                s.recv(100)  # the echo: the proxy has read the packet
        names = [e["parameters"]["user"] for e in p.logins()]
        assert names == ["u2", "u3", "u4"]
        p.clear_logins()
        assert p.logins() == []


def test_never_a_password() -> None:
    secret = "s3cret-do-not-keep"
    login = startup(user="alice", password=secret)
    with EchoServer() as echo, Proxy(upstream=echo.address) as p:
        with connect(p.port) as s:
            # The login and, right behind it, a PasswordMessage with the same secret.
            s.sendall(login + password_message(secret))
            total = len(login) + len(password_message(secret))
            wait_until(lambda: echo.received >= total, what="everything forwarded")
            dump = json.dumps([p.stats(connections=True), p.logins()])
    assert secret not in dump
    assert json.loads(dump)[1][0]["parameters"] == {"user": "alice", "password": "[redacted]"}


def test_logins_over_the_admin_api() -> None:
    with EchoServer() as echo, Proxy(upstream=echo.address, name="pg") as p:
        with AdminServer([p], ("127.0.0.1", 0)) as server:
            admin = AdminClient(server.url)
            with connect(p.port) as s:
                s.sendall(startup(user="bob", database="shop", application_name="api"))
                s.recv(100)
                detail = admin.proxy("pg")
                assert detail["links"][0]["login"]["application_name"] == "api"
                assert detail["logins"][0]["parameters"]["database"] == "shop"
            (entry,) = admin.logins("pg")
            assert entry["parameters"] == {
                "user": "bob",
                "database": "shop",
                "application_name": "api",
            }
            admin.clear_logins("pg")
            assert admin.logins("pg") == []


def test_cancel_requests_are_not_logins() -> None:
    with EchoServer() as echo, Proxy(upstream=echo.address) as p:
        with connect(p.port) as s:
            s.sendall(struct.pack("!iiii", 16, 80877102, 1234, 5678))
            s.recv(100)
        assert p.logins() == []


def test_keep_logins_is_checked() -> None:
    with pytest.raises(ValueError, match="keep_logins"):
        Proxy(upstream=("127.0.0.1", 1), keep_logins=-1)
