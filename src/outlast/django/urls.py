"""Health URLs: ``path("health/", include("outlast.django.urls"))``.

Gives ``live``, ``ready`` and ``db`` under the prefix you choose (keep it in
step with ``OUTLAST["HEALTH_PREFIX"]``, default ``/health``, so the middleware
never treats them as database views).
"""

from __future__ import annotations

from django.urls import path

from outlast.django.views import health_db, health_live, health_ready

app_name = "outlast"

urlpatterns = [
    path("live", health_live, name="live"),
    path("ready", health_ready, name="ready"),
    path("db", health_db, name="db"),
]
