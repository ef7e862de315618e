from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("api/hold", views.hold),
    path("api/boom", views.boom),
    path("api/stats", views.get_stats),
    path("api/ping", views.ping),
    path("api/cached", views.cached),
]
