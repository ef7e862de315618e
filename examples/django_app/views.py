from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .models import Lead


def leads(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        body = json.loads(request.body)
        # The client-chosen id makes the insert idempotent: the same id twice stores one row.
        Lead.objects.get_or_create(id=str(body["id"]), defaults={"name": str(body["name"])})
        return JsonResponse({"id": str(body["id"])}, status=201)
    rows = list(Lead.objects.order_by("-created_at", "id").values("id", "name")[:50])
    return JsonResponse(rows, safe=False)


def ping(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


leads = csrf_exempt(leads)
