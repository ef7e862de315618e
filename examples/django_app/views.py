from __future__ import annotations

from rest_framework import permissions, routers, viewsets
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from .models import Lead
from .serializers import LeadSerializer


class ApiRoot(routers.APIRootView):
    """``/api/``: the browsable index of the API, public (listed in ``OUTLAST["EXEMPT"]``)."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]


class LeadViewSet(viewsets.ModelViewSet):
    """``/api/leads/``: list (paginated), create, retrieve, update, delete.

    Creating calls ``serializer.save()``; under ``ATOMIC_REQUESTS`` the row is
    committed when the request's transaction ends.
    """

    queryset = Lead.objects.all()
    serializer_class = LeadSerializer
    permission_classes = [permissions.IsAuthenticated]


@api_view(["GET"])
@authentication_classes([])
@permission_classes([permissions.AllowAny])
def ping(request: Request) -> Response:
    """A route that needs no database (listed in ``OUTLAST["EXEMPT"]``)."""
    return Response({"ok": True})
