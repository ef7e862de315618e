"""DSN parsing and validation (pure logic): what parses, what is refused, and how."""

from __future__ import annotations

import psycopg
import pytest

import outlast
from outlast import ConfigurationError
from outlast._core.connections.dsn import make_dsn, parse_conninfo, parse_dsn, redact_dsn
from outlast._core.faults.redact import LIBPQ_KEYWORDS


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://app:p%40ss@db.example.com:6543/shop?sslmode=require",
            {
                "user": "app",
                "password": "p@ss",
                "host": "db.example.com",
                "port": "6543",
                "dbname": "shop",
                "sslmode": "require",
            },
        ),
        ("postgres://db", {"host": "db"}),
        (
            "postgresql+psycopg://u:pw@h1:5432,h2:5433/d",
            {"user": "u", "password": "pw", "host": "h1,h2", "port": "5432,5433", "dbname": "d"},
        ),
        (
            "postgresql+asyncpg://u@[::1]:5432/d",
            {"user": "u", "host": "::1", "port": "5432", "dbname": "d"},
        ),
        ("postgresql://%2Ftmp%2Fsock/d", {"host": "/tmp/sock", "dbname": "d"}),
        (
            "host=db port=5432 password='se cr\\'et' dbname = shop",
            {"host": "db", "port": "5432", "password": "se cr'et", "dbname": "shop"},
        ),
        ("host=db password=", {"host": "db", "password": ""}),
    ],
)
def test_parse_dsn(dsn: str, expected: dict[str, str]) -> None:
    assert parse_dsn(dsn) == expected
    assert outlast.parse_dsn is parse_dsn


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("", "empty"),
        ("mysql://u:Secr3tPw@h/d", "scheme"),
        ("postgresql://u:Secr3tPw@h:99999/d", "port"),
        ("postgresql://u:Secr3tPw@h:abc/d", "port"),
        ("postgresql://u:Secr/3tPw@h/d", "percent-encode"),
        ("postgresql://u:Secr3tPw@[::1/d", "IPv6"),
        ("host=db password='Secr3tPw", "unterminated"),
        ("host=db password=Se Secr3tPw", "missing '='"),
        ("host=db port=Secr3tPw", "port"),
        ("host=db connect_timeout=soon", "connect_timeout"),
        ("=Secr3tPw", "key=value"),
        ("postgresql://u:Secr3tPw@h/d?Secr3tPw", "key=value"),
        ("postgresql://u:%ZZSecr3tPw@h/d", None),
        ("postgresql://u:%C3%28Secr3tPw@h/d", "percent-encoding"),
        ("host=db sslmode=Secr3tPw", "'sslmode' must be one of"),
        ("postgresql://u:Secr3tPw@h/d?target_session_attrs=Secr3tPw", "target_session_attrs"),
    ],
)
def test_malformed_dsn_raises_without_the_password(dsn: str, fragment: str | None) -> None:
    try:
        parse_dsn(dsn)
    except ValueError as exc:
        assert isinstance(exc, ConfigurationError)
        assert "Secr3tPw" not in str(exc) and "3tPw" not in str(exc)
        if fragment is not None:
            assert fragment in str(exc)
    else:
        assert fragment is None  # "%ZZ" is left as is (like libpq); nothing to report


def test_make_dsn_round_trip() -> None:
    params = {"host": "db", "password": "a b'c\\d", "dbname": "", "port": 5432, "x": None}
    dsn = make_dsn(params)
    assert parse_dsn(dsn) == {"host": "db", "password": "a b'c\\d", "dbname": "", "port": "5432"}
    assert "a b'c" not in redact_dsn(dsn)
    with pytest.raises(ConfigurationError):
        make_dsn({"bad key": "x"})


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("postgresql+asyncpg://u:Secr3tPw@h/d", "SQLAlchemy URL"),
        ("host=db dbnme=shop", "unknown connection option 'dbnme'"),
        ("postgresql://u@h/d?foo=1&bar=2", "unknown connection option 'bar', 'foo'"),
        ("host=db password=se Secr3tPw=x", "not shown"),
    ],
)
def test_parse_conninfo_refuses_what_libpq_refuses(dsn: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_conninfo(dsn)
    assert fragment in str(info.value)
    assert "Secr3tPw" not in str(info.value)
    # parse_dsn stays lenient: SQLAlchemy URLs carry dialect options libpq never sees
    if "+" in dsn or "foo" in dsn:
        parse_dsn(dsn)


def test_parse_conninfo_knows_every_keyword_of_the_installed_libpq() -> None:
    known = {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}
    assert known - LIBPQ_KEYWORDS == set()
    plain = known - _VALUED
    assert set(parse_conninfo(" ".join(f"{k}=x" for k in sorted(plain)))) == plain


# Keywords whose values parse_dsn checks: "x" is not one of them.
_VALUED = {
    "port",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "gssencmode",
    "channel_binding",
    "sslcertmode",
    "sslnegotiation",
    "target_session_attrs",
    "load_balance_hosts",
}
