"""Hostile secrets: no password survives, whatever characters it holds.

Generated secrets (every printable ASCII character, URL delimiters, quotes,
backslashes, whitespace of several kinds, control characters, non-ASCII
letters, emoji, combining marks) are put where real code puts them -- raw
and percent-encoded URLs, libpq key=value strings for every libpq secret
keyword, query strings, JSON, Python reprs, YAML-style lines, a traceback's
source line -- and must not come out of `outlast.redact`, `Fault.message`
(from real psycopg, psycopg2 and asyncpg errors), a supervised task's
``[THREAD_CRASH]`` log line, its ``status().last_error`` or the supervisor's
``health()`` JSON. "Come out" means any 4 consecutive characters of the
secret that the same text without the secret does not contain.

Where the guarantee stops (see `outlast._core.faults.redact`): a raw line
break in a URL's password; a raw-URL password with whitespace after a raw
"@", or one that starts like ``5432/`` and holds whitespace (both read as a
host, a port and ordinary text; libpq refuses whitespace in a URL, so such a
URL connects nowhere); and, for plain drivers, the piece between a raw "@"
and a raw "/" of a password, which libpq takes for the host name
(outlast's own DSN parsing refuses such a URL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import string
from collections.abc import Callable
from urllib.parse import quote

import asyncpg
import psycopg
import psycopg2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import outlast
from outlast.supervise import AsyncSupervisor, Supervisor, ThreadTaskContext

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SENTINEL = "Qz7Vq9Kx"
GRAM = 4

# Whitespace of several kinds, controls, non-ASCII letters, emoji, a combining
# mark, bidi and zero-width characters.
ODD = "\t\x0b\x0c\r\xa0\u2009\u3000\x1b\x7f\x85\u200b\u200f\u202e\u0301éßø中文Ω🙂"
_chars = st.one_of(
    st.sampled_from(list(string.printable.replace("\n", "") + ODD)),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
)
secrets = st.text(_chars, min_size=8, max_size=40).filter(lambda s: len(set(s)) >= 5)
no_space_secrets = secrets.filter(lambda s: not any(c.isspace() for c in s))
multiline_secrets = st.text(st.one_of(_chars, st.just("\n")), min_size=8, max_size=40).filter(
    lambda s: len(set(s)) >= 5
)


def libpq_secret_keywords() -> set[str]:
    """What this libpq (psycopg's, PostgreSQL 18) calls secret: the options it
    displays as "*" (password fields), and the SCRAM keys, which log in as well."""
    found = set()
    for option in psycopg.pq.Conninfo.get_defaults():
        keyword = option.keyword.decode()
        if option.dispchar == b"*" or (keyword.startswith("scram_") and keyword.endswith("_key")):
            found.add(keyword)
    return found


LIBPQ_SECRETS = libpq_secret_keywords()
keywords = st.sampled_from(sorted(LIBPQ_SECRETS | {"passwd", "pwd", "PGPASSWORD"}))
schemes = st.sampled_from(["postgres", "postgresql", "postgresql+psycopg", "postgresql+asyncpg"])


def leaked(secret: str, out: str, public: str) -> list[str]:
    """The pieces of `secret` in `out` that are not in `public` (the text without it)."""
    if secret in out and secret not in public:
        return [secret]
    grams = {secret[i : i + GRAM] for i in range(len(secret) - GRAM + 1)}
    return sorted(g for g in grams if g in out and g not in public)


def check_redacted(secret: str, build: Callable[[str], str]) -> str:
    out = outlast.redact(build(secret))
    assert "withheld" not in out  # redact did not give up on the text
    public = build("") + "\n" + outlast.redact(build(SENTINEL))
    assert not leaked(secret, out, public), (build(secret), out)
    return out


def url_shape_readable(secret: str) -> bool:
    """Not one of the raw-URL shapes that cannot be told from a host and text."""
    if not any(c.isspace() for c in secret):
        return True
    head = re.match(r"\S*", secret)
    assert head is not None
    return "@" not in head.group() and re.match(r"\d+[/?#]", secret) is None


def test_every_libpq_secret_keyword_is_known() -> None:
    assert {"password", "sslpassword", "oauth_client_secret", "scram_client_key"} <= LIBPQ_SECRETS
    for keyword in sorted(LIBPQ_SECRETS):
        for text in (
            f"host=db {keyword}=hunter2x",
            f"?{keyword}=hunter2x&",
            f'"{keyword}": "hunter2x"',
        ):
            assert "hunter2x" not in outlast.redact(text), (keyword, text)


def libpq_quote(secret: str) -> str:
    return "'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_unquoted(secret: str) -> str:
    return re.sub(r"([\\'\"])", r"\\\1", secret)


# ----------------------------------------------------------------- redact()


@SETTINGS
@given(no_space_secrets, schemes)
def test_raw_url_passwords_of_any_characters(secret: str, scheme: str) -> None:
    """The issue's case and its relatives: ``P@ssw0rd#2024``, ``a?b@c``, ``x/y``, quotes..."""
    for build in (
        lambda pw: f"could not connect to {scheme}://app:{pw}@db.internal:5432/app?sslmode=require",
        lambda pw: f"Settings(url='{scheme}://app:{pw}@db/app', admin='ops@corp.example')",
        lambda pw: json.dumps({"url": f"{scheme}://app:{pw}@db/app"}, ensure_ascii=False),
        lambda pw: f'    conn = psycopg.connect("{scheme}://app:{pw}@db/app")\n    ^^^^^^',
        lambda pw: f"{scheme}://app:{pw}@db1/app and {scheme}://ro:{SENTINEL}@db2/app",
    ):
        check_redacted(secret, build)


@SETTINGS
@given(secrets.filter(lambda s: any(c.isspace() for c in s)), schemes)
def test_raw_url_passwords_with_whitespace(secret: str, scheme: str) -> None:
    assume(url_shape_readable(secret))
    out = check_redacted(secret, lambda pw: f"cannot reach {scheme}://app:{pw}@db/app: refused")
    assert f"{scheme}://app:***@db/app: refused" in out


def test_the_issue_s_password() -> None:
    text = "connect to postgresql://app:P@ssw0rd#2024@db/app failed"
    assert outlast.redact(text) == "connect to postgresql://app:***@db/app failed"
    text = "postgresql://app:P@ss?w0rd@db/app?sslmode=require"
    assert outlast.redact(text) == "postgresql://app:***@db/app?sslmode=require"


@SETTINGS
@given(secrets, schemes)
def test_percent_encoded_url_passwords(secret: str, scheme: str) -> None:
    out = check_redacted(
        secret,
        lambda pw: f"dsn={scheme}://app:{quote(pw, safe='')}@db:5432/app?sslmode=require ok",
    )
    assert f"{scheme}://app:***@db:5432/app?sslmode=require ok" in out


@SETTINGS
@given(multiline_secrets, keywords)
def test_every_libpq_secret_keyword_quoted(secret: str, keyword: str) -> None:
    out = check_redacted(
        secret, lambda pw: f"host=db port=5432 {keyword}={libpq_quote(pw)} dbname=app user=app"
    )
    assert "dbname=app user=app" in out


@SETTINGS
@given(no_space_secrets, keywords)
def test_every_libpq_secret_keyword_unquoted(secret: str, keyword: str) -> None:
    out = check_redacted(
        secret, lambda pw: f"host=db {keyword}={libpq_unquoted(pw)} user=app sslmode=require"
    )
    assert "user=app sslmode=require" in out


@SETTINGS
@given(secrets, keywords)
def test_every_libpq_secret_keyword_in_a_url_query(secret: str, keyword: str) -> None:
    check_redacted(
        secret,
        lambda pw: f"postgresql://app@db/app?{keyword}={quote(pw, safe='')}&sslmode=require",
    )


@SETTINGS
@given(multiline_secrets, keywords)
def test_every_libpq_secret_keyword_in_mappings_and_yaml(secret: str, keyword: str) -> None:
    for build in (
        lambda pw: f"connect_args={ {keyword: pw, 'host': 'db'}!r}",
        lambda pw: json.dumps({keyword: pw, "host": "db"}),
        lambda pw: json.dumps({keyword: pw, "host": "db"}, ensure_ascii=False),
        lambda pw: f"{keyword}: {json.dumps(pw)}\nhost: db",
    ):
        check_redacted(secret, build)


_host_chars = _chars.filter(lambda c: not c.isspace() and c not in "/?:,@\"'")


@SETTINGS
@given(
    st.text(_host_chars, min_size=1, max_size=12),
    st.text(st.one_of(_host_chars, st.just("@")), min_size=4, max_size=24),
)
def test_what_libpq_and_psycopg_echo_of_a_misread_url(head: str, rest: str) -> None:
    """libpq ends the password at its first raw "@": the rest becomes the host name
    (up to a "/", "?", ":" or ","), and libpq or psycopg echo it in quotes."""
    assume(len(set(rest)) >= 3)

    def host(pw: str) -> str:
        return f"{pw.split('@', 1)[-1]}@db.internal"  # what libpq reads as the host

    for build in (
        lambda pw: f'could not translate host name "{host(pw)}" to address: Name or service',
        lambda pw: f"failed to resolve host '{host(pw)}': [Errno -2] Name or service not known",
        lambda pw: f'connection to server at "{host(pw)}" (10.0.0.5), port 5432 failed: refused',
    ):
        assert "***@db.internal" in check_redacted(f"{head}@{rest}", build)


# ------------------------------------------------------ Fault.message, real drivers


def _faults_of(url: str, kv: str) -> list[tuple[str, str]]:
    """(driver, Fault.message) for each driver's failed connect (port 1 refuses)."""
    attempts: list[tuple[str, Callable[[], object]]] = [
        ("psycopg url", lambda: psycopg.connect(url)),
        ("psycopg2 url", lambda: psycopg2.connect(url)),
        ("psycopg kv", lambda: psycopg.connect(kv)),
        ("psycopg2 kv", lambda: psycopg2.connect(kv)),
        # asyncpg's own parser; host and port given apart, so no name is looked up
        ("asyncpg", lambda: asyncio.run(asyncpg.connect(url, host="127.0.0.1", port=1))),
    ]
    messages = []
    for name, attempt in attempts:
        try:
            conn = attempt()
        except Exception as exc:
            fault = outlast.classify(exc)
            messages.append((name, fault.message if fault is not None else outlast.redact(exc)))
        else:  # pragma: no cover - nothing listens on port 1
            conn.close()  # type: ignore[attr-defined]
    return messages


@FEW
@given(st.one_of(no_space_secrets, secrets.filter(url_shape_readable)))
def test_real_driver_errors_never_carry_the_password(secret: str) -> None:
    # hostaddr: libpq connects to 127.0.0.1:1 without looking up the (misread) host
    # name; nothing listens there, so every attempt fails at once.
    assume(not re.search(r"@[^@/]*/", secret))  # libpq would take that piece for the host
    query = "hostaddr=127.0.0.1&port=1&connect_timeout=3"
    url = f"postgresql://app:{secret}@db.internal/app?{query}"
    kv = f"host=db.internal hostaddr=127.0.0.1 port=1 user=app password={libpq_unquoted(secret)}"
    public = " ".join(m for _, m in _faults_of(url.replace(secret, SENTINEL), kv))
    for driver, message in _faults_of(url, kv):
        assert not leaked(secret, message, public), (driver, message)


@pytest.mark.parametrize(
    "secret", ["P@ssw0rd#2024", "P@ss?w0rd", "P@ss w0rd#x", "P@ss,w0rd", "P@ss:w0rd", "a@b@c#d"]
)
def test_real_dns_failures_of_a_misread_url(secret: str) -> None:
    """The issue's reproduction: the rest of the password became a host name."""
    url = f"postgresql://app:{secret}@nonexistent.invalid/app?connect_timeout=3"
    for connect in (psycopg.connect, psycopg2.connect):
        with pytest.raises(psycopg.Error if connect is psycopg.connect else psycopg2.Error) as info:
            connect(url)
        fault = outlast.classify(info.value)
        assert fault is not None
        tail = secret.split("@", 1)[1]
        assert tail not in fault.message and secret not in fault.message, fault.message


# ------------------------------------------- [THREAD_CRASH], last_error, health()

_CLOCK_FIELDS = ("last_error_at", "last_heartbeat", "started_at", "heartbeat_age_s")


def _crash_outputs(exc: BaseException, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Everything a crash of a supervised thread shows: log lines, status, health JSON."""
    caplog.clear()

    def task(ctx: ThreadTaskContext) -> None:
        raise exc

    sup = Supervisor(backoff=0)
    sup.start("sync", task, restart="never")
    assert sup.stop(timeout=10) == []
    assert sup.status()["sync"].state == "failed"
    health = sup.health()
    for status in health["tasks"].values():
        for field in _CLOCK_FIELDS:  # times we print, never text from the error
            status.pop(field)
    lines = [r.getMessage() for r in caplog.records if r.name == "outlast"]
    assert any("[THREAD_CRASH]" in line for line in lines)
    return [*lines, str(sup.status()["sync"].last_error), json.dumps(health, ensure_ascii=False)]


def _hostile_error(pw: str) -> BaseException:
    url = f"postgresql://app:{pw}@db/app"
    try:
        try:
            raise psycopg.OperationalError(
                f"connection to {url} failed: password={libpq_quote(pw)} rejected"
            )
        except psycopg.OperationalError as driver_error:
            raise RuntimeError(f"cannot reach {url} with {{'password': {pw!r}}}") from driver_error
    except RuntimeError as exc:
        return exc


@settings(
    max_examples=40,
    deadline=None,
    # caplog is cleared for every example (`_crash_outputs`)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(secret=st.one_of(no_space_secrets, secrets.filter(url_shape_readable)))
def test_supervised_crashes_never_show_the_password(
    secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outlast")
    public = "\n".join(_crash_outputs(_hostile_error(SENTINEL), caplog))
    for output in _crash_outputs(_hostile_error(secret), caplog):
        assert not leaked(secret, output, public), output


async def test_an_async_task_crash_never_shows_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outlast")
    secret = "P@ssw0rd#2024"

    async def task(ctx: object) -> None:
        raise _hostile_error(secret)

    sup = AsyncSupervisor(backoff=0)
    sup.start("async", task, restart="never")
    for _ in range(500):
        if sup.status()["async"].state == "failed":
            break
        await asyncio.sleep(0.01)
    assert await sup.stop(timeout=10) == []
    shown = [r.getMessage() for r in caplog.records] + [json.dumps(sup.health())]
    assert any("[THREAD_CRASH]" in s for s in shown)
    for text in shown:
        assert "ssw0rd" not in text and "2024" not in text, text
