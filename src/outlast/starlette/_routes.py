"""Which route will serve a request, found before the app routes it.

The middleware decides before the app runs whether a request may be refused
by the breaker, gets a budget, and how it is named in logs and events. For
that it needs the view and the full path template (router prefixes and
mounts included), for every kind of route the app may hold:

- Starlette ``Route`` / ``Mount`` / ``Host`` and the sub-applications they mount
  (recursively, with the mount's path as prefix); a ``StaticFiles`` mount is
  never a database route;
- FastAPI routes, including ``APIRouter``\\s included with a prefix: older
  FastAPI copies their routes into the app's router (each with the full path);
  newer FastAPI keeps one entry per included router, whose
  ``effective_route_contexts()`` yields the routes as served (prefix applied).

Only the routes' own ``matches(scope)`` is asked, the very test the router
applies, so the answer cannot drift from what the app does. What cannot be
told (a mounted ASGI app without routes) is ``None``: the request is admitted
on first use, which costs it nothing if it never touches the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from starlette.routing import Host, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from outlast._core.web.options import NO_ROUTE

__all__ = ["resolve"]

_MAX_DEPTH = 16


def resolve(routes: Iterable[Any], scope: Scope) -> tuple[object | None, str]:
    """``(view, path template)`` of the route that will serve `scope`.

    The view is the endpoint function, ``None`` when it cannot be told (a
    mounted app without routes), or `NO_ROUTE` for a 404, a 405 and a static
    file. The template includes router prefixes and mount paths
    (``/api/leads/{lead_id}``); for a 404 it is the request's path.
    """
    found = _resolve(routes, scope, "", 0)
    if found is None:
        return NO_ROUTE, scope.get("path", "?")
    return found


def _candidates(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):  # FastAPI's entry for an included router
            try:
                yield from contexts()
                continue
            except Exception:  # an internal API changed: match the entry itself
                pass
        yield route


def _resolve(
    routes: Iterable[Any], scope: Scope, prefix: str, depth: int
) -> tuple[object | None, str] | None:
    partial = False
    for route in _candidates(routes):
        try:
            match, child = route.matches(scope)
        except Exception:  # a route that cannot judge this scope does not serve it
            continue
        if match == Match.PARTIAL:
            partial = True  # wrong method: a 405 unless a later route matches fully
            continue
        if match != Match.FULL:
            continue
        target = getattr(route, "starlette_route", None) or route
        if isinstance(target, Mount | Host):
            return _mounted(target, {**scope, **child}, prefix, depth)
        endpoint = child.get("endpoint", getattr(route, "endpoint", None))
        path = getattr(route, "path_format", None) or getattr(route, "path", None) or ""
        return endpoint, prefix + path
    if partial:
        return NO_ROUTE, prefix + scope.get("path", "")
    return None


def _mounted(
    mount: Mount | Host, scope: Scope, prefix: str, depth: int
) -> tuple[object | None, str] | None:
    path = prefix + (mount.path if isinstance(mount, Mount) else "")
    app = mount.app
    if isinstance(app, StaticFiles):
        return NO_ROUTE, path
    routes = mount.routes
    if not routes or depth >= _MAX_DEPTH:
        return None, path  # an ASGI app of its own: admitted on first use
    return _resolve(routes, scope, path, depth + 1)
