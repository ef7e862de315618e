"""Redaction: remove passwords and bound SQL parameters from text.

`redact(text)` is what every outlast log line, error message and health
payload goes through. It removes

- passwords in URLs of any scheme (``postgres://user:pw@host``,
  ``postgresql+psycopg://user:p%40ss@host``, ``redis://:pw@host``), whatever
  raw (not percent-encoded) characters they hold: a URL's password runs to
  the last ``@`` of its whitespace-free stretch, so ``@``, ``#``, ``?``,
  ``/``, quotes or ``://`` inside it do not end it early; a raw space
  (``postgres://user:se cret@host``) extends it to the last ``@`` on the line,
- the pieces of such a password that libpq and psycopg echo after misreading
  the URL (a raw ``@`` makes the rest of the password part of the host name:
  ``could not translate host name "ssw0rd#2024@db"``),
- the values of every libpq secret keyword (`SECRET_KEYWORDS`: ``password``,
  ``sslpassword``, ``oauth_client_secret``, ``scram_client_key``,
  ``scram_server_key``; also ``passwd``, ``pwd``, ``PGPASSWORD``) in libpq
  key=value strings (``password=secret``, ``password='se cret'`` with ``\\'``
  escapes), URL query strings (``?password=secret``), Python/JSON mappings
  (``'password': 'secret'``) and ``password: secret`` text (YAML, log lines;
  any case),
- the fragments libpq (and Python's ``int()``) echo when a DSN cannot be
  parsed, which may be pieces of a password split off by an unquoted space or
  a raw ``/`` (``missing "=" after "cret"``, ``invalid percent-encoded token:
  "p%zzw"``, ``invalid integer value "se" for connection option "port"``,
  urllib's ``bad query field: 'w0rd'`` in asyncpg);
  an echoed name that is a libpq keyword is kept (``missing "=" after
  "dbname"``), any other becomes ``***``,
- bound SQL parameters that drivers and SQLAlchemy put into messages:
  SQLAlchemy's ``[parameters: ...]`` line, the values in PostgreSQL's
  ``DETAIL:  Key (email)=(a@b.c) already exists.`` and ``Failing row contains
  (...)``, the value quoted in ``invalid input syntax for type integer: "abc"``,
  and asyncpg's ``invalid input for query argument $1: 'abc'``.

Where it stops: a URL is read one line at a time, so a raw line break in a
URL's password ends it; and two shapes cannot be told from ordinary text,
so they are read as text: a raw-URL password holding whitespace after a raw
``@`` (``user:a@b c@host``: is ``b`` the host?), and one that starts like a
port and a path and then holds whitespace (``user:5432/x y@host``: is it
``host:5432/db`` followed by an email address?). libpq refuses raw
whitespace in a URL, so neither connects anywhere; percent-encode them.

It never raises.
"""

from __future__ import annotations

import re

__all__ = ["LIBPQ_KEYWORDS", "MASK", "SECRET_KEYWORDS", "redact", "summarize"]

MASK = "***"

# libpq's connection keywords (PostgreSQL 18). They live here, not in _dsn,
# because redaction needs them too: a keyword that libpq echoes back is a
# public name, never a fragment of a secret, so it is safe to keep.
LIBPQ_KEYWORDS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "requiressl",
        "sslnegotiation",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "sslkeylogfile",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
        "min_protocol_version",
        "max_protocol_version",
        "scram_client_key",
        "scram_server_key",
        "oauth_issuer",
        "oauth_client_id",
        "oauth_client_secret",
        "oauth_scope",
    }
)

# libpq's secret keywords: the options PQconndefaults() marks "*" (password,
# sslpassword, oauth_client_secret; PostgreSQL 18) or that carry key material
# (scram_client_key, scram_server_key: enough to log in without the password).
SECRET_KEYWORDS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)

# The start of a URL, then its user name and the ":" that starts a password.
# (No "[" in a user name: "scheme://[::1]:5432" is a host and a port.)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_USER_RE = re.compile(r"[^\s:/?#@\[\]]*:")
# What follows "host:" when the URL has no password: a port, then the path,
# the query or the end. (Not "5432,host2": "00,0 1" is a password, and a list
# of hosts followed by an "@" on the same line is masked, as before.)
_PORT_RE = re.compile(r"\d+(?:[/?#]|$)")
_STRETCH_RE = re.compile(r"\S*")

# libpq and psycopg echo the host name they were given; a raw "@" in a URL's
# password makes the rest of the password part of it. A host name never holds
# an "@", so everything before the last one goes.
_HOST_ECHO_RE = re.compile(
    r"""(?P<head>(?:could\ not\ translate\ host\ name|connection\ to\ server\ at
        |failed\ to\ resolve\ host|host\ name)\ (?P<q>["']))
        (?P<host>[^\n]*@[^\n]*?)(?=(?P=q)(?:\ to\ address|[\ ,:(]|$))""",
    re.X | re.M,
)

_PASSWORD_KEYS = (
    r"(?:ssl)?password|passwd|pwd|pgpassword|oauth_client_secret|scram_client_key"
    r"|scram_server_key"
)

# ?password=...&  (URL query strings): the value ends at & or #
_QUERY_RE = re.compile(rf"(?i)(?<=[?&;])(?P<key>{_PASSWORD_KEYS})=(?P<val>[^&#\s]*)")

# password=... (libpq key=value, keyword arguments): quoted with backslash
# escapes, or unquoted up to whitespace. An unterminated quote runs to the end.
_KV_RE = re.compile(
    rf"""(?ix)
    (?<![A-Za-z0-9_?&;])
    (?P<key>{_PASSWORD_KEYS})
    (?P<sep>\s*=\s*)
    (?P<val>
        '(?:\\.|[^'\\])*(?:'|\\?\Z)\S*
      | "(?:\\.|[^"\\])*(?:"|\\?\Z)\S*
      | (?:\\.|[^\s\\'"])(?:\\.|[^\s\\])*\\?
    )
    """
)

# 'password': 'secret'  /  "password": "secret"  (repr of dicts, JSON)
_MAP_RE = re.compile(
    rf"""(?ix)
    (?P<key>(?P<q>['"])(?:{_PASSWORD_KEYS})(?P=q)\s*:\s*)
    (?P<val>
        '(?:\\.|[^'\\])*(?:'|\\?\Z)
      | "(?:\\.|[^"\\])*(?:"|\\?\Z)
      | [^\s,}}]+
    )
    """
)

# password: secret  (YAML, "key: value" log lines). Not after "/", ":" or "@",
# so a URL whose user is literally named "password" is left to the URL rule.
_COLON_RE = re.compile(
    rf"""(?ix)
    (?<![A-Za-z0-9_/:@.\-])
    (?P<key>(?:{_PASSWORD_KEYS})[ \t]*:[ \t]*)
    (?P<val>
        '(?:\\.|[^'\\])*(?:'|\\?\Z)
      | "(?:\\.|[^"\\])*(?:"|\\?\Z)
      | [^\s,;}}\]]+
    )
    """
)

# What libpq echoes when it cannot parse a DSN: the quoted token may be a piece
# of the password (an unquoted space or a raw "/" in it splits the DSN there).
# Option names are kept when they are libpq keywords; values always go.
# The echoed token may itself hold quotes: it ends at the quote that libpq's own
# wording (or the end of the line) follows.
_ECHO_END = (
    r'(?="(?: in connection info string| for connection option|, use percent-encoded'
    r"|\s*$))"
)
_LIBPQ_NAME_ECHO_RE = re.compile(
    r'(?P<head>(?:missing "=" after |invalid connection option '
    r'|(?:invalid|(?:extra|missing) key/value separator "=" in) URI query parameter: )")'
    r"(?P<val>[^\n]*?)" + _ECHO_END,
    re.M,
)
_LIBPQ_VALUE_ECHO_RE = re.compile(
    r"(?P<head>(?:invalid percent-encoded token: |forbidden value %00 in percent-encoded value: "
    r'|unexpected spaces found in |invalid integer value |invalid port number: )")'
    r"(?P<val>[^\n]*?)" + _ECHO_END,
    re.M,
)

# Python's own echoes of a DSN it cannot parse (asyncpg's and SQLAlchemy's
# parsers call int() on the port and urllib on the query): the same fragments
# as above, as a repr() in either quote.
_PY_ECHO_RE = re.compile(
    r"(?P<head>(?:invalid literal for int\(\) with base \d+|bad query field"
    r"|invalid IPv6 address in the connection URI|Port could not be cast to integer value as)"
    r":? )(?P<q>['\"])[^\n]*(?P=q)"
)

# SQLAlchemy: "[parameters: {...}]" is always one line (values are repr()'d).
_SA_PARAMS_RE = re.compile(r"\[parameters: [^\n]*")

# PostgreSQL DETAIL lines that echo row values.
_KEY_DETAIL_RE = re.compile(r"(?P<head>Key \([^\n]*?\)=\()[^\n]*(?P<tail>\))")
_FAILING_ROW_RE = re.compile(r"(?P<head>Failing row contains \()[^\n]*(?P<tail>\))")
_INPUT_VALUE_RE = re.compile(
    r"(?P<head>(?:invalid input (?:syntax|value) for [^:\n]{1,120}"
    r"|value out of range[^:\n]{0,120}|invalid byte sequence for [^:\n]{1,120}"
    r"|out of range for type [^:\n]{1,120}): )\"(?:[^\"\n]|\"\")*\"?"
)
_ASYNCPG_ARG_RE = re.compile(
    r"(?P<head>invalid input for query argument \$\d+: )[^\n]*?(?= \(|$)", re.M
)


def _redact_urls(text: str) -> str:
    """Mask the password of every ``scheme://user:password@`` URL, line by line."""
    if "://" not in text:
        return text
    return "\n".join(_redact_url_line(line) for line in text.split("\n"))


def _redact_url_line(line: str) -> str:
    """Mask URL passwords in one line, taking the URLs from last to first.

    A password ends at the last "@" of the whitespace-free stretch it starts
    in (a raw "@", "#", "?" or "/" in it does not end it). When that stretch
    holds no "@", the password holds whitespace and ends at the last "@" on the
    line; unless what follows "host:" is a port (``scheme://db:5432/x ... a@b``
    has no password). It never reaches into the next URL that has a password
    of its own, except when it holds that URL: a raw "x://" in a password
    looks like a URL; glued to it, or with no "@" before it, it is one password.
    """
    starts = list(_SCHEME_RE.finditer(line))
    if not starts:
        return line
    spans: list[tuple[int, int]] = []  # (first, end) of each password, right to left
    limit = len(line)  # where the next URL with a password begins
    for m in reversed(starts):
        user = _USER_RE.match(line, m.end())
        if user is None:
            continue
        first = user.end()
        token_end = _STRETCH_RE.match(line, first, limit).end()  # type: ignore[union-attr]
        glued = bool(spans) and token_end == limit
        at = -1 if glued else line.rfind("@", first, token_end)
        if at < 0 and not glued:
            if _PORT_RE.match(line, first):
                continue  # "host:port", no password
            at = line.rfind("@", first, limit)  # whitespace in the password
            if at < 0 and not spans:
                continue  # no "@" at all: no password
        if at < 0:  # the next "URL" is part of this password: join them
            spans[-1] = (first, spans[-1][1])
        else:
            spans.append((first, at))
        limit = m.start()
    for first, end in spans:  # right to left: earlier offsets stay valid
        line = f"{line[:first]}{MASK}{line[end:]}"
    return line


def _redact_host_echo(match: re.Match[str]) -> str:
    host = match["host"]
    return f"{match['head']}{MASK}{host[host.rfind('@') :]}"


def _redact_name_echo(match: re.Match[str]) -> str:
    val = match["val"]
    if val in LIBPQ_KEYWORDS or "://" in val:  # a URL's password is already masked
        return match.group(0)
    return f"{match['head']}{MASK}"


def _redact_value_echo(match: re.Match[str]) -> str:
    return match.group(0) if "://" in match["val"] else f"{match['head']}{MASK}"


def _mask_value(match: re.Match[str]) -> str:
    val = match["val"]
    quote = val[:1] if val[:1] in ("'", '"') else ""
    return f"{match.group(0)[: match.start('val') - match.start(0)]}{quote}{MASK}{quote}"


def _redact(text: str) -> str:
    # Named secrets first: a URL password with whitespace reaches to the last
    # "@" on its line, which must not be one inside another secret's value.
    text = _QUERY_RE.sub(lambda m: f"{m['key']}={MASK}", text)
    text = _KV_RE.sub(_mask_value, text)
    text = _MAP_RE.sub(_mask_value, text)
    text = _COLON_RE.sub(_mask_value, text)
    text = _redact_urls(text)
    text = _HOST_ECHO_RE.sub(_redact_host_echo, text)
    text = _LIBPQ_NAME_ECHO_RE.sub(_redact_name_echo, text)
    text = _LIBPQ_VALUE_ECHO_RE.sub(_redact_value_echo, text)
    text = _PY_ECHO_RE.sub(lambda m: f"{m['head']}'{MASK}'", text)
    text = _SA_PARAMS_RE.sub(f"[parameters: {MASK}]", text)
    text = _KEY_DETAIL_RE.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
    text = _FAILING_ROW_RE.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
    text = _INPUT_VALUE_RE.sub(lambda m: f'{m["head"]}"{MASK}"', text)
    return _ASYNCPG_ARG_RE.sub(lambda m: f"{m['head']}{MASK}", text)


def redact(text: object) -> str:
    """Return `text` with passwords and bound SQL parameters replaced by ``***``.

    Accepts any object (it is converted with ``str()``); never raises.
    """
    try:
        s = text if isinstance(text, str) else str(text)
        return _redact(s)
    except Exception:
        return "<unprintable text withheld>"


_MAX_MESSAGE = 300
_KEEP_PREFIXES = ("DETAIL:", "HINT:")


def summarize(text: str, *, limit: int = _MAX_MESSAGE) -> str:
    """A short, redacted, single-line version of a driver's error message.

    Keeps the primary line, libpq's indented continuation lines and the
    DETAIL/HINT lines; drops SQL text (SQLAlchemy's ``[SQL: ...]`` block,
    ``LINE n:`` excerpts, ``QUERY:``/``CONTEXT:``/``STATEMENT:`` lines),
    the parameters and SQLAlchemy's "Background on this error" link.
    """
    try:
        text = redact(text)
        for marker in ("[SQL: ", "[parameters: ", "(Background on this error at:"):
            pos = text.find(marker)
            if pos >= 0:
                text = text[:pos]
        if text.startswith("(") and ") " in text[:120]:
            # SQLAlchemy's "(psycopg.errors.UniqueViolation) " prefix
            head, _, rest = text.partition(") ")
            if "." in head or head[1:].isidentifier():
                text = rest
        kept: list[str] = []
        primary_seen = False
        for raw in text.splitlines():
            line = raw.rstrip()
            if not line.strip():
                continue
            if not primary_seen:
                kept.append(line.strip())
                primary_seen = True
                continue
            stripped = line.strip()
            if stripped.startswith(_KEEP_PREFIXES) or (
                raw.startswith("\t") and not stripped.startswith(("^", "LINE "))
            ):
                kept.append(stripped)
        out = " ".join(" ".join(kept).split())
        out = redact(out)
        if len(out) > limit:
            out = out[: limit - 1].rstrip() + "\u2026"
        return out
    except Exception:
        return "<unprintable message withheld>"
