from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from outlast.django import runtime

from .models import Note

#: What on_commit hooks saw, in order.
HOOKS: list[str] = []


def _add(conn: Any, text: str) -> int:
    note = Note.objects.create(text=text)
    transaction.on_commit(lambda: HOOKS.append(text))
    return note.id


@csrf_exempt
def notes(request: HttpRequest) -> HttpResponse:
    """The README's write path under ATOMIC_REQUESTS: runtime().transaction(...)."""
    note_id = runtime().transaction(connection, _add, request.POST["text"])
    return JsonResponse({"id": note_id}, status=201)


@csrf_exempt
def plain(request: HttpRequest) -> HttpResponse:
    """An ordinary ORM save."""
    return JsonResponse({"id": _add(connection, request.POST["text"])}, status=201)
