"""Redaction: remove passwords and bound SQL parameters from text.

`redact(text)` is what every outlast log line, error message and health
payload goes through. It removes

- passwords in URLs of any scheme (``postgres://user:pw@host``,
  ``postgresql+psycopg://user:p%40ss@host``, ``redis://:pw@host``),
  including a raw (not percent-encoded) space in the password
  (``postgres://user:se cret@host``),
- passwords in libpq key=value strings (``password=secret``,
  ``password='se cret'`` with ``\\'`` escapes), URL query strings
  (``?password=secret``), Python/JSON mappings (``'password': 'secret'``) and
  ``password: secret`` text (YAML, log lines; any case),
- the fragments libpq (and Python's ``int()``) echo when a DSN cannot be
  parsed, which may be pieces of a password split off by an unquoted space or
  a raw ``/`` (``missing "=" after "cret"``, ``invalid percent-encoded token:
  "p%zzw"``, ``invalid integer value "se" for connection option "port"``);
  an echoed name that is a libpq keyword is kept (``missing "=" after
  "dbname"``), any other becomes ``***``,
- bound SQL parameters that drivers and SQLAlchemy put into messages:
  SQLAlchemy's ``[parameters: ...]`` line, the values in PostgreSQL's
  ``DETAIL:  Key (email)=(a@b.c) already exists.`` and ``Failing row contains
  (...)``, the value quoted in ``invalid input syntax for type integer: "abc"``,
  and asyncpg's ``invalid input for query argument $1: 'abc'``.

It never raises.
"""

from __future__ import annotations

import re

__all__ = ["LIBPQ_KEYWORDS", "MASK", "redact", "summarize"]

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

_URL_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s<>`]*)")

# A raw space in the password ("postgres://u:se cret@h") ends the URL above
# before its "@": "user:" then a first chunk that whitespace interrupts before
# any "/", "?", "#" or "@", then the rest of the line up to the next "@" (not
# crossing another URL). This also masks the text between "host:port " and a
# later "@" on the same line; over-masking a log line beats leaking a password.
# (A password with both a raw "@" and a raw space cannot be told from a host.)
_URL_SPACE_RE = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s<>`/?#@:]*:)"
    r"(?P<pw>[^\s<>`/?#@]*[ \t][^\n<>`@]{0,256}?)(?=@)"
)

_PASSWORD_KEYS = r"(?:ssl)?password|passwd|pwd|pgpassword"

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
_LIBPQ_NAME_ECHO_RE = re.compile(
    r'(?P<head>(?:missing "=" after |invalid connection option '
    r'|(?:invalid|(?:extra|missing) key/value separator "=" in) URI query parameter: )")'
    r'(?P<val>[^"\n]*)(?=")'
)
_LIBPQ_VALUE_ECHO_RE = re.compile(
    r"(?P<head>(?:invalid percent-encoded token: |forbidden value %00 in percent-encoded value: "
    r'|unexpected spaces found in |invalid integer value |invalid port number: )")'
    r'(?P<val>[^"\n]*)(?=")'
)

# Python's own echo of a port that is not a number (asyncpg's and SQLAlchemy's
# DSN parsers call int() on it): the same fragment as above.
_INT_LITERAL_RE = re.compile(r"(?P<head>invalid literal for int\(\) with base \d+: )'[^\n]*'")

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


def _redact_url(match: re.Match[str]) -> str:
    scheme, rest = match["scheme"], match["rest"]
    cut = len(rest)
    for sep in "?#":
        pos = rest.find(sep)
        if pos >= 0:
            cut = min(cut, pos)
    at = rest.rfind("@", 0, cut)
    if at < 0:
        # A raw (not percent-encoded) '?' or '#' in the password moved the
        # cut before the '@': accept the first '@' if what precedes it looks
        # like user:password rather than a query string.
        at = rest.find("@")
        if at < 0 or ":" not in rest[:at] or "=" in rest[:at]:
            return match.group(0)
    userinfo = rest[:at]
    if ":" not in userinfo:
        return match.group(0)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{user}:{MASK}{rest[at:]}"


def _redact_url_space(match: re.Match[str]) -> str:
    if "://" in match["pw"]:  # the "@" belongs to a later URL
        return match.group(0)
    return f"{match['head']}{MASK}"


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
    text = _URL_SPACE_RE.sub(_redact_url_space, text)
    text = _URL_RE.sub(_redact_url, text)
    text = _LIBPQ_NAME_ECHO_RE.sub(_redact_name_echo, text)
    text = _LIBPQ_VALUE_ECHO_RE.sub(_redact_value_echo, text)
    text = _INT_LITERAL_RE.sub(lambda m: f"{m['head']}'{MASK}'", text)
    text = _QUERY_RE.sub(lambda m: f"{m['key']}={MASK}", text)
    text = _KV_RE.sub(_mask_value, text)
    text = _MAP_RE.sub(_mask_value, text)
    text = _COLON_RE.sub(_mask_value, text)
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
