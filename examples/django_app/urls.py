from __future__ import annotations

from django.conf import settings
from django.urls import include, path

from . import views

urlpatterns = [
    path("api/leads", views.leads),
    path("api/ping", views.ping),
]
if getattr(settings, "OUTLAST", None) is not None:
    urlpatterns.append(path("health/", include("outlast.django.urls")))
