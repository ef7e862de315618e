"""The health views (``application/health+json``)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from outlast._core.web.options import no_db
from outlast.django._middleware import response, runtime

__all__ = ["health_db", "health_live", "health_ready"]


@no_db
def health_live(request: HttpRequest) -> HttpResponse:
    """Liveness: never touches the database."""
    return response(runtime().live_answer())


@no_db
def health_ready(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 (``warn``) during an outage unless ``READY_FAIL_ON_DB``."""
    return response(runtime().ready_answer())


@no_db
def health_db(request: HttpRequest) -> HttpResponse:
    """``SELECT 1`` through the Guard; 503 while the database is down."""
    return response(runtime().db_answer())
