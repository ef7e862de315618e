"""DSN parsing and validation shared by every part of outlast.

`parse_dsn` accepts both forms libpq accepts, plus SQLAlchemy's URLs:

- URLs: ``postgres://``, ``postgresql://`` and ``postgresql+<driver>://``
  (``postgresql+psycopg://``, ``postgresql+asyncpg://``...), with
  percent-encoded user, password, host and database, several ``host:port``
  pairs separated by commas, IPv6 literals in brackets, and query parameters;
- libpq key=value strings (``host=db port=5432 password='se cret'``, single
  quotes with backslash escapes).

A malformed DSN raises `outlast.ConfigurationError` (a `ValueError`) that names
what is wrong and never contains the password (nor any other value that could
be a fragment of it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

from outlast._core.faults.errors import ConfigurationError
from outlast._core.faults.redact import LIBPQ_KEYWORDS, SECRET_KEYWORDS, redact

__all__ = ["is_url", "make_dsn", "parse_conninfo", "parse_dsn", "redact_dsn"]

_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_INT_KEYS = frozenset(
    {"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"}
)
_INT_KEYS_MS = frozenset({"tcp_user_timeout"})

# Options whose values libpq (and asyncpg, where it knows the option) takes
# from a fixed list; anything else is refused before a connection is tried.
_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
}

_SECRET_KEYS = SECRET_KEYWORDS


def _err(what: str) -> ConfigurationError:
    return ConfigurationError(f"malformed DSN: {what}")


def _name(key: str) -> str:
    """A keyword that is safe to echo (never a fragment of a value)."""
    return f"'{key}'" if key in LIBPQ_KEYWORDS else "a keyword"


def is_url(dsn: str) -> bool:
    """True when `dsn` is in URL form (``scheme://...``)."""
    return _SCHEME_RE.match(dsn.strip()) is not None


def parse_dsn(dsn: str) -> dict[str, str]:
    """Parse a PostgreSQL DSN (URL or key=value) into libpq keywords.

    Returns e.g. ``{"host": "db", "port": "5432", "user": "app",
    "password": "...", "dbname": "shop", "sslmode": "require"}``; only the keys
    present in the DSN appear. Several hosts stay comma-separated, as libpq
    wants them. Raises `ConfigurationError` (a `ValueError`) naming the problem,
    without the password.
    """
    if not isinstance(dsn, str):
        raise ConfigurationError(f"a DSN must be a string, not {type(dsn).__name__}")
    text = dsn.strip()
    if not text:
        raise _err("the DSN is empty")
    params = _parse_url(text) if is_url(text) else _parse_kv(text)
    _validate(params)
    return params


def parse_conninfo(dsn: str) -> dict[str, str]:
    """`parse_dsn`, plus what libpq itself refuses: for DSNs handed to libpq as is.

    Also rejects a SQLAlchemy ``postgresql+<driver>://`` URL and keywords that
    libpq does not know. An unknown keyword is named only when the DSN holds
    no password: an unquoted space in a password (``password=se cret=x``)
    makes its second half look like a keyword.
    """
    params = parse_dsn(dsn)
    m = _SCHEME_RE.match(dsn.strip())
    if m is not None and "+" in m["scheme"]:
        raise _err(
            "a SQLAlchemy URL (postgresql+<driver>://) is not a libpq connection string;"
            " use postgresql://"
        )
    unknown = sorted(key for key in params if key not in LIBPQ_KEYWORDS)
    if unknown:
        shown = (
            "(not shown: the DSN holds a password)"
            if _SECRET_KEYS & params.keys()
            else (", ".join(repr(key) for key in unknown))
        )
        raise _err(f"unknown connection option {shown}")
    return params


def _parse_url(text: str) -> dict[str, str]:
    m = _SCHEME_RE.match(text)
    assert m is not None
    scheme = m["scheme"].lower()
    base = scheme.partition("+")[0]
    if base not in ("postgres", "postgresql"):
        shown = scheme if len(scheme) <= 40 else scheme[:40] + "..."
        raise _err(
            f"unsupported scheme {shown!r} (expected postgres://, postgresql:// "
            "or postgresql+<driver>://)"
        )
    rest = text[m.end() :]
    if any(c.isspace() for c in rest):
        raise _err("a URL cannot contain whitespace (percent-encode it as %20)")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _err("a URL cannot contain '#' (percent-encode it as %23, e.g. in the password)")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in path:
        # libpq ends the user info at the first "@" or "/": a raw "/" in a password
        # turns the rest of it into the host and database names (and into its
        # error messages). A database name with an "@" can be written %40.
        raise _err(
            "an '@' after the first '/': the user name or password contains a reserved "
            "character such as '/', '?' or '#', or the database name an '@'; "
            "percent-encode it"
        )
    params: dict[str, str] = {}
    userinfo, at, hostspec = authority.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            params["user"] = _unquote(user, "the user name")
        if colon:
            params["password"] = _unquote(password, "the password")
    hosts: list[str] = []
    ports: list[str] = []
    if hostspec:
        for part in hostspec.split(","):
            host, port = _split_hostport(part)
            hosts.append(_unquote(host, "a host name"))
            ports.append(port)
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    if slash and path:
        params["dbname"] = _unquote(path, "the database name")
    if query:
        for item in query.split("&"):
            if not item:
                continue
            key, eq, value = item.partition("=")
            key = _unquote(key, "a query parameter name")
            if not eq or not _KEY_RE.fullmatch(key):
                raise _err("a query parameter is not of the form key=value")
            params[key] = _unquote(value, f"the value of {_name(key)}")
    return params


def _split_hostport(part: str) -> tuple[str, str]:
    if part.startswith("["):
        end = part.find("]")
        if end < 0:
            raise _err("unterminated '[' in an IPv6 host address")
        host, after = part[1:end], part[end + 1 :]
        if after and not after.startswith(":"):
            raise _err("unexpected text after an IPv6 host address")
        return host, after[1:]
    host, colon, port = part.partition(":")
    if colon and not port:
        raise _err("a port is missing after ':'")
    return host, port


def _unquote(value: str, what: str) -> str:
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise _err(f"invalid percent-encoding in {what}") from None


def _parse_kv(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        m = _KEY_RE.match(text, i)
        if m is None:
            raise _err("expected key=value pairs (a keyword must start with a letter)")
        key = m.group(0)
        i = m.end()
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=":
            raise _err(f"missing '=' after {_name(key)}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        chars: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise _err(f"unterminated quoted value for {_name(key)}")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
        else:
            while i < n and not text[i].isspace():
                c = text[i]
                if c == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                else:
                    chars.append(c)
                    i += 1
        params[key] = "".join(chars)
    return params


def _validate(params: Mapping[str, str]) -> None:
    port = params.get("port")
    if port:
        for p in port.split(","):
            if p and not (p.isascii() and p.isdigit() and 0 < int(p) < 65536):
                raise _err("invalid port (each port must be a number from 1 to 65535)")
    for key in _INT_KEYS | _INT_KEYS_MS:
        value = params.get(key)
        if value and not (
            value.strip().lstrip("-").isascii() and value.strip().lstrip("-").isdigit()
        ):
            unit = "milliseconds" if key in _INT_KEYS_MS else "seconds"
            raise _err(f"{key!r} must be an integer ({unit})")
    for key, choices in _CHOICES.items():
        value = params.get(key)
        if value is not None and value not in choices:
            raise _err(f"{key!r} must be one of {', '.join(choices)}")


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_dsn(params: Mapping[str, object]) -> str:
    """Build a libpq key=value DSN from `params` (``None`` values are left out).

    Values are quoted when needed, so ``parse_dsn(make_dsn(p)) == p`` for
    string values.
    """
    parts: list[str] = []
    for key, value in params.items():
        if value is None:
            continue
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ConfigurationError("a DSN keyword must be an identifier (letters, digits, _)")
        parts.append(f"{key}={_quote(str(value))}")
    return " ".join(parts)


def redact_dsn(dsn: str) -> str:
    """`dsn` with its password replaced by ``***`` (works on malformed DSNs too)."""
    return redact(dsn)
