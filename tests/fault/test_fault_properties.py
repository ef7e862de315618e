"""Property tests: classify never raises; redact never lets a password through."""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import outlast
from outlast import Fault, FaultKind

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class BrokenAttrs(Exception):
    @property
    def sqlstate(self) -> str:
        raise KeyError("boom")

    @property
    def orig(self) -> Any:
        raise ValueError("boom")


class WeirdSqlstate(Exception):
    sqlstate: Any = None
    pgcode: Any = None


_base_classes = st.sampled_from(
    [
        Exception,
        ValueError,
        OSError,
        ConnectionRefusedError,
        ConnectionResetError,
        TimeoutError,
        BrokenStr,
        BrokenAttrs,
        WeirdSqlstate,
        psycopg.OperationalError,
        psycopg.errors.AdminShutdown,
        KeyError,
        RuntimeError,
    ]
)
_args = st.lists(
    st.one_of(
        st.text(max_size=200),
        st.integers(),
        st.none(),
        st.binary(max_size=20),
        st.floats(allow_nan=True),
        st.sampled_from(["XX000", "57P01", "\x00", "é" * 5]),
    ),
    max_size=4,
)


@st.composite
def exceptions(draw: st.DrawFn) -> BaseException:
    cls = draw(_base_classes)
    try:
        exc: BaseException = cls(*draw(_args))
    except Exception:
        exc = cls()
    if isinstance(exc, WeirdSqlstate):
        exc.sqlstate = draw(st.one_of(st.none(), st.integers(), st.text(max_size=8)))
        exc.pgcode = draw(st.one_of(st.none(), st.text(max_size=6)))
    return exc


@SETTINGS
@given(exceptions(), st.lists(exceptions(), max_size=4), st.booleans(), st.booleans())
def test_classify_never_raises(
    exc: BaseException, chain: list[BaseException], cycle: bool, during_commit: bool
) -> None:
    current = exc
    for nxt in chain:
        current.__cause__ = nxt
        current = nxt
    if cycle:
        current.__cause__ = exc  # a cycle in __cause__
        try:
            exc.orig = current  # type: ignore[attr-defined]
        except Exception:
            pass
    fault = outlast.classify(exc, during_commit=during_commit)
    assert fault is None or isinstance(fault, Fault)
    if fault is not None:
        assert isinstance(fault.message, str)
        assert fault.transient is (
            fault.kind in (FaultKind.UNAVAILABLE, FaultKind.CONFLICT, FaultKind.READ_ONLY)
        )


@pytest.mark.parametrize("obj", [None, 42, "text", object(), KeyboardInterrupt(), SystemExit(1)])
def test_classify_non_faults(obj: Any) -> None:
    assert outlast.classify(obj) is None


# ---------------------------------------------------------------- redact

_pw_chars = string.ascii_letters + string.digits + "!#$%&()*+,-./:;<>?@[]^_`{|}~=é€"
passwords = st.text(alphabet=_pw_chars, min_size=6, max_size=30).filter(
    lambda p: p.strip() and len(set(p)) > 3
)
_plain = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10)
_noise = st.text(alphabet=string.ascii_letters + " .,:\n", max_size=30)


@SETTINGS
@given(
    passwords,
    _plain,
    _plain,
    _noise,
    _noise,
    st.sampled_from(
        [
            "postgres",
            "postgresql",
            "postgresql+psycopg",
            "postgresql+asyncpg",
            "redis",
            "mysql+pymysql",
        ]
    ),
)
def test_redact_url_percent_encoded(
    pw: str, user: str, host: str, before: str, after: str, scheme: str
) -> None:
    url = f"{scheme}://{user}:{quote(pw, safe='')}@{host}:5432/db?sslmode=require"
    assume(
        quote(pw, safe="")
        not in f"{before}{scheme}://{user}:@{host}:5432/db?sslmode=require {after}"
    )
    out = outlast.redact(f"{before}{url} {after}")
    assert quote(pw, safe="") not in out
    assert f"{scheme}://{user}:***@{host}:5432/db" in out


@SETTINGS
@given(
    st.text(
        alphabet=string.ascii_letters + string.digits + "!$%&()*+,-.:;=@[]^_{|}~'\"",
        min_size=6,
        max_size=30,
    ).filter(lambda p: len(set(p)) > 3),
    _plain,
    _plain,
)
def test_redact_url_raw_password(pw: str, user: str, host: str) -> None:
    assume(pw not in f"could not connect: postgresql://{user}:@{host}/db failed")
    out = outlast.redact(f"could not connect: postgresql://{user}:{pw}@{host}/db failed")
    assert pw not in out


@SETTINGS
@given(passwords, _noise, _noise, st.sampled_from(["password", "PASSWORD", "sslpassword"]))
def test_redact_libpq_key_value(pw: str, before: str, after: str, key: str) -> None:
    assume(pw not in f"{before} host=db {key}= dbname=x {after} user=u port=5432")
    quoted = "'" + pw.replace("\\", "\\\\").replace("'", "\\'") + "'"
    text = f"{before} host=db {key}={quoted} dbname=x {after}"
    assert pw not in outlast.redact(text)
    # unquoted form: libpq values end at whitespace
    unquoted = pw.replace("\\", "").replace("'", "").replace('"', "")
    if len(unquoted) >= 6:
        assert unquoted not in outlast.redact(f"host=db {key}={unquoted} user=u")
        assert unquoted not in outlast.redact(f"host=db {key} = {unquoted}")


@SETTINGS
@given(
    st.text(
        alphabet=string.ascii_letters + string.digits + " '\\\"", min_size=6, max_size=30
    ).filter(lambda p: len(set(p.replace(" ", ""))) > 3 and p.strip() == p)
)
def test_redact_quoted_with_spaces_and_escapes(pw: str) -> None:
    assume(pw not in "host=db password= port=5432")
    quoted = "'" + pw.replace("\\", "\\\\").replace("'", "\\'") + "'"
    out = outlast.redact(f"host=db password={quoted} port=5432")
    assert pw not in out
    assert "port=5432" in out
    # and an unterminated quote runs to the end of the text (never leaks)
    bare = pw.replace("'", "").replace("\\", "").strip()
    if len(bare) >= 4 and bare not in "host=db password=":
        out2 = outlast.redact(f"host=db password='{bare}")
        assert bare not in out2


@SETTINGS
@given(
    st.text(
        alphabet=string.ascii_letters + string.digits + "@.-_ ", min_size=6, max_size=30
    ).filter(lambda p: len(set(p)) > 3 and p.strip() == p)
)
def test_redact_sqlalchemy_parameters_and_detail(value: str) -> None:
    assume(
        value not in "(psycopg.errors.UniqueViolation) duplicate key value violates unique "
        "constraint users_email_key DETAIL: Key (email)= already exists. [SQL: INSERT INTO "
        "users (email) VALUES (%(email)s)] [parameters: {'email': }] (Background on this error "
        "at: https://sqlalche.me/e/20/gkpj)"
    )
    text = (
        "(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "
        f'"users_email_key"\nDETAIL:  Key (email)=({value}) already exists.\n'
        "[SQL: INSERT INTO users (email) VALUES (%(email)s)]\n"
        f"[parameters: {{'email': {value!r}}}]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)"
    )
    out = outlast.redact(text)
    assert value not in out
    assert "[SQL: INSERT INTO users (email) VALUES (%(email)s)]" in out


def _chunks(pw: str) -> list[str]:
    """The pieces of `pw` between spaces that are long enough to identify it."""
    return [c for c in pw.split() if len(c) >= 4]


@SETTINGS
@given(
    st.text(
        # raw (not percent-encoded) spaces; no "@" (with a raw space too it cannot
        # be told from the host) and none of "/?#", which end a URL's authority
        alphabet=string.ascii_letters + string.digits + " !$%&()*+,-.:;=[]^_{|}~",
        min_size=6,
        max_size=30,
    ).filter(lambda p: " " in p.strip() and len(set(p)) > 3),
    _plain,
    _plain,
    st.sampled_from(["postgres", "postgresql", "postgresql+psycopg", "redis"]),
)
def test_redact_url_raw_password_with_spaces(pw: str, user: str, host: str, scheme: str) -> None:
    template = f"could not connect: {scheme}://{user}:@{host}:5432/db failed"
    assume(pw not in template and not any(c in template for c in _chunks(pw)))
    out = outlast.redact(f"could not connect: {scheme}://{user}:{pw}@{host}:5432/db failed")
    assert pw not in out
    for chunk in _chunks(pw):
        assert chunk not in out
    assert f"{scheme}://{user}:***@{host}:5432/db failed" in out


_colon_keys = st.sampled_from(["password", "Password", "PASSWORD", "pwd", "sslpassword"])
_colon_seps = st.sampled_from([":", ": ", " : ", ":\t"])


@SETTINGS
@given(
    st.text(
        # an unquoted value ends at whitespace, ",", ";", "}" or "]"
        alphabet=string.ascii_letters + string.digits + "!#$%&()*+-./:<=>?@[^_`{|~é€",
        min_size=6,
        max_size=30,
    ).filter(lambda p: len(set(p)) > 3),
    _colon_keys,
    _colon_seps,
    _noise,
    _noise,
)
def test_redact_colon_style_password(pw: str, key: str, sep: str, before: str, after: str) -> None:
    template = f"{before} user: app {key}{sep} host: db {after}"
    assume(pw not in template)
    out = outlast.redact(f"{before} user: app {key}{sep}{pw} host: db {after}")
    assert pw not in out
    assert f"{key}{sep}***" in out


@SETTINGS
@given(
    st.text(
        alphabet=string.ascii_letters + string.digits + " ,;}]'\\", min_size=6, max_size=30
    ).filter(lambda p: len(set(p.replace(" ", ""))) > 3 and p.strip() == p),
    _colon_keys,
)
def test_redact_colon_style_quoted_password(pw: str, key: str) -> None:
    template = f"user: app {key}: '' host: db"
    assume(pw not in template and not any(c in template for c in _chunks(pw)))
    quoted = "'" + pw.replace("\\", "\\\\").replace("'", "\\'") + "'"
    out = outlast.redact(f"user: app {key}: {quoted} host: db")
    assert pw not in out
    for chunk in _chunks(pw):
        assert chunk not in out
