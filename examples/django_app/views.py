from __future__ import annotations

import json
from typing import Any

from _common import ENABLED
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .models import Lead


def _add(conn: Any, lead_id: str, name: str) -> None:
    # The client-chosen id makes the insert idempotent: the same id twice stores one row.
    Lead.objects.get_or_create(id=lead_id, defaults={"name": name})


def leads(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        body = json.loads(request.body)
        lead_id, name = str(body["id"]), str(body["name"])
        if ENABLED:
            from outlast.django import runtime

            # One transaction within the rest of the request budget: re-run
            # whole after a fault before COMMIT; a lost COMMIT is resolved with
            # pg_xact_status(), never sent again (unresolved: 503 OUTCOME_UNKNOWN).
            runtime().transaction(connection, _add, lead_id, name)
        else:
            with transaction.atomic():  # a lost COMMIT reply is a 500, applied or not
                _add(connection, lead_id, name)
        return JsonResponse({"id": lead_id}, status=201)
    rows = list(Lead.objects.order_by("-created_at", "id").values("id", "name")[:50])
    return JsonResponse(rows, safe=False)


def ping(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


leads = csrf_exempt(leads)
