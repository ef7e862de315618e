"""The proxy records each login's StartupMessage parameters (and never a password)."""

from __future__ import annotations

import json
import re
import struct

import psycopg
import pytest
from chaos_kit import EchoServer, connect, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outlast.chaos import AdminServer, Proxy
from outlast.chaos._logins import login_parameters
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
            admin = server.client()
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


# ------------------------------------------------------- secrets in any parameter

_SECRET_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_secrets = st.text(_SECRET_CHARS, min_size=8, max_size=40).filter(lambda s: len(set(s)) >= 5)


def _options_escape(value: str) -> str:
    """How the server splits ``options``: whitespace separates, a backslash escapes."""
    return re.sub(r"(\s|\\)", r"\\\1", value)


def _leaked(secret: str, shown: str, public: str) -> list[str]:
    grams = {secret[i : i + 4] for i in range(len(secret) - 3)}
    return sorted(g for g in grams if g in shown and g not in public)


@settings(max_examples=500, deadline=None)
@given(_secrets, st.sampled_from(["password", "app.api_token", "myapp.secret", "scram_client_key"]))
def test_secrets_in_every_parameter_value_are_masked(secret: str, setting: str) -> None:
    def params(value: str) -> dict[str, str]:
        return {
            "user": "app",
            "options": f"-c statement_timeout=5s -c {setting}={_options_escape(value)} "
            "-c search_path=app",
            "application_name": f"worker primary_conninfo=host=db\\ password={value!r}",
            "x_password_hint": value,
        }

    shown = json.dumps(login_parameters(params(secret)), ensure_ascii=False)
    public = json.dumps(params(""), ensure_ascii=False) + json.dumps(
        login_parameters(params("Qz7Vq9Kx")), ensure_ascii=False
    )
    assert not _leaked(secret, shown, public), shown
    if not secret.startswith(("'", '"')):
        assert "-c search_path=app" in shown  # the rest of the options stays readable


def test_secrets_in_a_url_in_a_value_are_masked() -> None:
    shown = login_parameters({"application_name": "postgresql://app:P@ssw0rd#2024@db/app"})
    assert shown == {"application_name": "postgresql://app:[redacted]@db/app"}


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=_secrets)
def test_a_real_login_with_a_secret_in_its_options(secret: str, pg_proxy: ProxiedServer) -> None:
    """psycopg sends ``-c app.api_token=<secret>``; the server gets it, the log does not."""

    def shown_for(value: str) -> str:
        pg_proxy.clear_logins()
        options = f"-c app.api_token={_options_escape(value)} -c search_path=public"
        with psycopg.connect(pg_proxy.dsn(options=options)) as conn:
            assert conn.execute("SHOW app.api_token").fetchone() == (value,)
            return json.dumps([pg_proxy.stats(connections=True), pg_proxy.logins()])

    shown = shown_for(secret)
    # What the same login shows with a harmless value: its own words
    # ("parameters", ports) are no leak when a secret happens to share 4 letters.
    public = shown_for("Qz7Vq9Kx")
    assert secret not in shown
    assert not _leaked(secret, shown, public)
    if not secret.startswith(("'", '"')):
        # (An unclosed quote at the start may be a conninfo value: masked to the end.)
        assert "search_path=public" in shown
