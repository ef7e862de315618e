"""Views that use Django's connection directly (no outlast call in sight)."""

from __future__ import annotations

from _probe_common import HOLD_SQL, Unrelated, entered, stats
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse


def hold(request: HttpRequest) -> HttpResponse:
    entered.add()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(HOLD_SQL)
    return JsonResponse({"ok": True})


def boom(request: HttpRequest) -> HttpResponse:
    entered.add()
    raise Unrelated("a bug in the view")


def cached(request: HttpRequest) -> HttpResponse:
    # An ordinary (not exempt) route that happens not to need the database.
    return JsonResponse({"ok": True})


def get_stats(request: HttpRequest) -> HttpResponse:
    return JsonResponse(stats())


def ping(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})
