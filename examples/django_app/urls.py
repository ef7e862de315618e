from __future__ import annotations

from django.conf import settings
from django.urls import include, path
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.APIRootView = views.ApiRoot
router.register("leads", views.LeadViewSet)

urlpatterns = [
    path("api/", include(router.urls)),
    path("api/auth/token/", obtain_auth_token, name="api-token"),
    path("api/ping/", views.ping, name="ping"),
]
if getattr(settings, "OUTLAST", None) is not None:
    urlpatterns.append(path("health/", include("outlast.django.urls")))  # outlast
    import outlast.prometheus

    # GET /metrics (optional: what `outlast drill --soak` reads)
    urlpatterns.append(path("metrics", outlast.prometheus.django_view))
