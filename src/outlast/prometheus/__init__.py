"""Prometheus metrics for outlast: database up, breaker, retries, faults, pools, tasks, 503s.

::

    import outlast.prometheus

    outlast.prometheus.install(app)          # Flask or Starlette/FastAPI: GET /metrics
    # Django urls.py: path("metrics", outlast.prometheus.django_view)
    # or, with your own registry / exporter:
    outlast.prometheus.register(registry)

Every live `outlast.Guard`, every pool or engine built by ``outlast.psycopg``,
``outlast.psycopg2``, ``outlast.sqlalchemy`` and ``outlast.asyncpg``, every
supervisor and every web integration is reported, read at scrape time (see
`OutlastCollector` for the names). ``/metrics`` is never a database route: it
answers during an outage, when it matters most. Registering also turns on the
operation-duration histogram of the hardened connections.

`RULES_FILE` holds the alert rules (``outlast alerts --prometheus`` prints them).
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from outlast._core.timing.operations import OPERATIONS
from outlast._core.web.options import no_db

from ._collector import OutlastCollector

__all__ = [
    "CONTENT_TYPE",
    "OutlastCollector",
    "django_view",
    "exposition",
    "install",
    "register",
    "rules",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
"""The exposition format's content type."""

_lock = threading.Lock()
_registered: dict[int, OutlastCollector] = {}


def register(registry: CollectorRegistry = REGISTRY) -> OutlastCollector:
    """Register outlast's collector with `registry` (once; later calls return the same one)."""
    with _lock:
        collector = _registered.get(id(registry))
        if collector is None:
            collector = OutlastCollector()
            registry.register(collector)
            _registered[id(registry)] = collector
    OPERATIONS.enable()
    return collector


def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The body and content type of a ``/metrics`` answer (outlast's collector included)."""
    register(registry)
    return generate_latest(registry), CONTENT_TYPE


def install(app: Any, *, path: str = "/metrics", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``GET <path>`` on a Flask or Starlette/FastAPI `app` (never a database route)."""
    register(registry)
    if hasattr(app, "add_url_rule") and hasattr(app, "view_functions"):  # Flask

        @no_db
        def flask_metrics() -> tuple[bytes, int, dict[str, str]]:
            body, content_type = exposition(registry)
            return body, 200, {"Content-Type": content_type, "Cache-Control": "no-store"}

        app.add_url_rule(path, "outlast_metrics", flask_metrics, methods=["GET"])
        return
    if hasattr(app, "add_route") and hasattr(app, "router"):  # Starlette / FastAPI
        from starlette.requests import Request
        from starlette.responses import Response

        @no_db
        async def starlette_metrics(request: Request) -> Response:
            body, content_type = exposition(registry)
            return Response(body, headers={"Cache-Control": "no-store"}, media_type=content_type)

        app.add_route(path, starlette_metrics, methods=["GET"], include_in_schema=False)
        return
    raise TypeError(
        f"install() takes a Flask or Starlette/FastAPI app, not {type(app).__qualname__};"
        " for Django route outlast.prometheus.django_view"
    )


@no_db
def django_view(request: Any) -> Any:
    """Django view: ``path("metrics", outlast.prometheus.django_view)`` (never a database route)."""
    from django.http import HttpResponse

    body, content_type = exposition()
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


def rules() -> str:
    """The alert rules (Prometheus ``rule_files`` YAML) shipped with outlast."""
    return resources.files(__package__).joinpath("rules.yml").read_text(encoding="utf-8")
