"""Which Django views are database routes, and how a route is named in logs.

- `route_label`: the route pattern of a resolved URL as people write it
  (``api/leads/<int:pk>/``), also for ``re_path`` and Django REST framework's
  routers, whose patterns are regular expressions
  (``api/^leads/(?P<pk>[^/.]+)/$`` becomes ``api/leads/<pk>/``).
- `ExemptRules`: ``OUTLAST["EXEMPT"]``, the routes that never touch the
  database. An entry is an exact path (``"/api/ping"``; a trailing slash does
  not matter, so ``"/"`` exempts the root and nothing else), a path pattern
  (``"/static/*"``: ``*`` stands for one path segment or part of one, ``**``
  for any number of segments), a route pattern (``"api/leads/<int:pk>/"``,
  as in the log labels) or a URL name (``"api-root"``, ``"shop:ping"``).
- `mark_of`: a view's `no_db` / `db_route` mark, on the view function or on
  its class (``View.as_view()``, REST framework's views and viewsets).
- `release_atomic`: with ``ATOMIC_REQUESTS`` Django wraps every view in
  ``transaction.atomic()``, which connects before the view runs, so a view
  that needs no database would fail while it is down. For a request that is
  not a database route the middleware marks the view non-atomic *for that
  request only* (the same view behind a database route stays atomic).
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from outlast._core.faults.errors import ConfigurationError

__all__ = [
    "ExemptRules",
    "RequestFlags",
    "current_flags",
    "end_request",
    "mark_of",
    "release_atomic",
    "route_label",
    "start_request",
    "unknown_names",
    "walk_urlconf",
]

logger = logging.getLogger("outlast")

# --------------------------------------------------------------------------- labels

_NAMED_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>")


def _group_end(text: str, start: int) -> int:
    """Index just past the group that opens at ``text[start]`` (balanced, escapes skipped)."""
    depth = 0
    i = start
    in_class = False
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _regex_to_route(text: str) -> str:
    """``^leads/(?P<pk>[^/.]+)/$`` -> ``leads/<pk>/`` (path() routes pass through)."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            out.append(nxt if not nxt.isalnum() else "\\" + nxt)
            i += 2
        elif ch == "(":
            end = _group_end(text, i)
            named = _NAMED_GROUP.match(text, i)
            if named:
                out.append(f"<{named.group(1)}>")
            elif text.startswith("(?:", i):
                out.append(_regex_to_route(text[i + 3 : end - 1]))
            else:
                out.append("<arg>")
            i = end
            # A quantifier on a group (an optional format suffix) says nothing here.
            while i < n and text[i] in "?*+":
                i += 1
        elif ch in "^$":
            i += 1
        elif ch == "?" and out and out[-1].endswith("/"):
            i += 1  # "/?": an optional trailing slash
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def route_label(route: str | None) -> str | None:
    """The readable route pattern of a resolved URL (None when there is none)."""
    if not route:
        return None
    if not any(c in route for c in "^$\\(["):
        return route  # path() routes, e.g. "api/leads/<int:pk>/"
    return _regex_to_route(route)


# --------------------------------------------------------------------------- EXEMPT


def _path_key(path: str) -> str:
    return path.rstrip("/") or "/"


def _glob(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*)", _path_key(pattern))
    body = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )
    return re.compile(rf"{body}/?")


class ExemptRules:
    """``OUTLAST["EXEMPT"]``: exact paths, path patterns, route patterns and URL names."""

    __slots__ = ("_globs", "_paths", "entries", "names")

    def __init__(self, entries: str | Sequence[str] = ()) -> None:
        given = (entries,) if isinstance(entries, str) else tuple(entries)
        for entry in given:
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigurationError(
                    "OUTLAST EXEMPT entries are paths ('/api/ping', '/static/*'), route"
                    f" patterns ('api/leads/<int:pk>/') or URL names, not {entry!r}"
                )
        paths: set[str] = set()
        globs: list[re.Pattern[str]] = []
        names: set[str] = set()
        for entry in (e.strip() for e in given):
            if entry.startswith("/") and "<" not in entry:
                if "*" in entry:
                    globs.append(_glob(entry))
                else:
                    paths.add(_path_key(entry))
            else:
                names.add(entry.lstrip("/"))
        self.entries: tuple[str, ...] = given
        #: The entries that are route patterns or URL names (checked against the URLconf).
        self.names: frozenset[str] = frozenset(names)
        self._paths = frozenset(paths)
        self._globs = tuple(globs)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def matches(self, path: str, match: Any) -> bool:
        """True when the request for `path`, resolved as `match`, is exempt."""
        if _path_key(path) in self._paths:
            return True
        if any(g.fullmatch(path) for g in self._globs):
            return True
        if self.names and match is not None:
            route = getattr(match, "route", None)
            if route is not None and (route in self.names or route_label(route) in self.names):
                return True
            if getattr(match, "view_name", None) in self.names:
                return True
        return False


@dataclass(frozen=True)
class UrlEntry:
    """One URL pattern of the URLconf: its full route, readable label, name and view."""

    route: str
    label: str
    name: str | None
    callback: Callable[..., Any]


def walk_urlconf(urlconf: str | None = None) -> Iterator[UrlEntry]:
    """Every URL pattern of the URLconf, includes followed (names with their namespaces)."""
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns: Iterable[Any], route: str, namespace: str) -> Iterator[UrlEntry]:
        for pattern in patterns:
            full = route + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                ns = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                yield from walk(pattern.url_patterns, full, ns)
            elif isinstance(pattern, URLPattern):
                name = f"{namespace}{pattern.name}" if pattern.name else None
                yield UrlEntry(full, route_label(full) or full, name, pattern.callback)

    yield from walk(get_resolver(urlconf).url_patterns, "", "")


def unknown_names(rules: ExemptRules, urls: Sequence[UrlEntry]) -> list[str]:
    """EXEMPT route patterns and URL names that match no URL pattern (likely typos)."""
    known = {u.route for u in urls} | {u.label for u in urls} | {u.name for u in urls if u.name}
    return sorted(n for n in rules.names if n not in known)


# --------------------------------------------------------------------------- marks


def mark_of(view: object, mark: str) -> bool | None:
    """The `no_db` / `db_route` mark of a view function or of its class (None: unmarked)."""
    for target in (view, getattr(view, "view_class", None), getattr(view, "cls", None)):
        if target is not None:
            value = getattr(target, mark, None)
            if value is not None:
                return bool(value)
    return None


# --------------------------------------------------------------------------- per request


class RequestFlags:
    """What the middleware learns about the request it serves (one per request).

    A mutable object in a context variable: under ASGI, Django runs the view
    middleware and the view in threads with copies of the request's context,
    and every copy shares this one object.
    """

    __slots__ = ("answered", "exempt", "faulted")

    def __init__(self) -> None:
        #: Not a database route: no request transaction under ATOMIC_REQUESTS.
        self.exempt = False
        #: The database answered a query of this request (evidence it is up).
        self.answered = False
        #: A database fault struck this request (its connection may be gone).
        self.faulted = False


_flags: contextvars.ContextVar[RequestFlags | None] = contextvars.ContextVar(
    "outlast_django_request", default=None
)


def start_request() -> tuple[RequestFlags, contextvars.Token[RequestFlags | None]]:
    """New flags for the request being served in this context."""
    flags = RequestFlags()
    return flags, _flags.set(flags)


def end_request(token: contextvars.Token[RequestFlags | None]) -> None:
    try:
        _flags.reset(token)
    except ValueError:  # another context (an ASGI thread hop): just clear it
        _flags.set(None)


def current_flags() -> RequestFlags | None:
    return _flags.get()


# --------------------------------------------------------------------------- ATOMIC_REQUESTS


class _NonAtomicWhenExempt(set[str]):
    """``view._non_atomic_requests`` that also holds every alias while the current
    request is not a database route (Django asks ``alias in ...`` just after the
    view middleware ran, in the request's context)."""

    def __contains__(self, alias: object) -> bool:
        flags = _flags.get()
        return (flags is not None and flags.exempt) or set.__contains__(self, alias)


def release_atomic(view: Callable[..., Any]) -> None:
    """Let `view` run without Django's request transaction for the current request."""
    flags = _flags.get()
    if flags is None:
        return
    current = getattr(view, "_non_atomic_requests", None)
    if not isinstance(current, _NonAtomicWhenExempt):
        try:
            view._non_atomic_requests = _NonAtomicWhenExempt(current or ())  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # a bound method or a builtin: leave it
            return
    flags.exempt = True
