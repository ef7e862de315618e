"""Split a SQL file into statements, the way the server's lexer would see them.

Only needed for files that must run outside a transaction (``CREATE INDEX
CONCURRENTLY``, ``ALTER TYPE ... ADD VALUE`` before PostgreSQL 12, ``VACUUM``):
several statements sent as one query string form an implicit transaction,
which those refuse. Semicolons inside quotes (``'...'`` with ``''``,
``E'...'`` with backslash escapes, ``"..."``), dollar quotes (``$$...$$``,
``$tag$...$tag$``), line comments and nested block comments do not split.
"""

from __future__ import annotations

import re

__all__ = ["split_statements"]

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\uffff]")


def _skip_quoted(text: str, i: int, quote: str, backslash: bool) -> int:
    """Index after the closing `quote` of a literal that starts at ``text[i]``."""
    n = len(text)
    i += 1
    while i < n:
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:  # doubled quote
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _skip_block_comment(text: str, i: int) -> int:
    n = len(text)
    depth = 0
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _has_code(statement: str) -> bool:
    """True when `statement` holds anything but whitespace and comments."""
    i, n = 0, len(statement)
    while i < n:
        if statement[i].isspace():
            i += 1
        elif statement.startswith("--", i):
            end = statement.find("\n", i)
            i = n if end < 0 else end + 1
        elif statement.startswith("/*", i):
            i = _skip_block_comment(statement, i)
        else:
            return True
    return False


def split_statements(text: str) -> list[str]:
    """The statements of `text`, each without its terminating semicolon, comments kept."""
    out: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "'":
            escaped = (
                i > 0 and text[i - 1] in "eE" and (i < 2 or not _IDENT_CHAR.match(text[i - 2]))
            )
            i = _skip_quoted(text, i, "'", escaped)
        elif c == '"':
            i = _skip_quoted(text, i, '"', False)
        elif c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif c == "$" and (i == 0 or not _IDENT_CHAR.match(text[i - 1])):
            match = _DOLLAR_TAG.match(text, i)
            if match is None:
                i += 1
                continue
            tag = match.group(0)
            end = text.find(tag, match.end())
            i = n if end < 0 else end + len(tag)
        elif c == ";":
            statement = text[start:i].strip()
            if _has_code(statement):
                out.append(statement)
            i += 1
            start = i
        else:
            i += 1
    tail = text[start:].strip()
    if _has_code(tail):
        out.append(tail)
    return out
