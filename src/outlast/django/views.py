"""The health views (``application/health+json``)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse

from outlast._health import HEALTH_CONTENT_TYPE
from outlast._health import health_db as _health_db
from outlast._health import health_live as _health_live
from outlast._health import health_ready as _health_ready
from outlast._web import no_db

from ._middleware import runtime

__all__ = ["health_db", "health_live", "health_ready"]


def _response(status: int, doc: dict[str, Any], retry_after: str | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(doc), status=status, content_type=HEALTH_CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    if retry_after is not None:
        response["Retry-After"] = retry_after
    return response


@no_db
def health_live(request: HttpRequest) -> HttpResponse:
    """Liveness: never touches the database."""
    return _response(*_health_live())


@no_db
def health_ready(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 (``warn``) during an outage unless ``READY_FAIL_ON_DB``."""
    rt = runtime()
    return _response(
        *_health_ready(rt.guard, fail_on_db=rt.config.ready_fail_on_db, supervisor=rt.supervisor)
    )


@no_db
def health_db(request: HttpRequest) -> HttpResponse:
    """``SELECT 1`` through the Guard; 503 while the database is down."""
    rt = runtime()
    return _response(*_health_db(rt.guard, rt.probe))
