"""Redaction: remove passwords and bound SQL parameters from text.

`redact(text)` is what every outlast log line, error message and health
payload goes through. It removes

- passwords in URLs of any scheme (``postgres://user:pw@host``,
  ``postgresql+psycopg://user:p%40ss@host``, ``redis://:pw@host``),
- passwords in libpq key=value strings (``password=secret``,
  ``password='se cret'`` with ``\\'`` escapes), URL query strings
  (``?password=secret``), and Python/JSON mappings (``'password': 'secret'``),
- bound SQL parameters that drivers and SQLAlchemy put into messages:
  SQLAlchemy's ``[parameters: ...]`` line, the values in PostgreSQL's
  ``DETAIL:  Key (email)=(a@b.c) already exists.`` and ``Failing row contains
  (...)``, the value quoted in ``invalid input syntax for type integer: "abc"``,
  and asyncpg's ``invalid input for query argument $1: 'abc'``.

It never raises.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redact", "summarize"]

MASK = "***"

_URL_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s<>`]*)")

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


def _mask_value(match: re.Match[str]) -> str:
    val = match["val"]
    quote = val[:1] if val[:1] in ("'", '"') else ""
    return f"{match.group(0)[: match.start('val') - match.start(0)]}{quote}{MASK}{quote}"


def _redact(text: str) -> str:
    text = _URL_RE.sub(_redact_url, text)
    text = _QUERY_RE.sub(lambda m: f"{m['key']}={MASK}", text)
    text = _KV_RE.sub(_mask_value, text)
    text = _MAP_RE.sub(_mask_value, text)
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
