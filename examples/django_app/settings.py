"""Settings for the Django REST framework example (everything from the environment)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import dj_database_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import BUDGET, DATABASE_URL, ENABLED

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_app.urls"
WSGI_APPLICATION = "django_app.wsgi.application"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "rest_framework.authtoken",
    "django_app",
]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# DATABASE_URL may carry a driver (postgresql+psycopg://...), as for SQLAlchemy.
_url = re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", DATABASE_URL)
DATABASES = {
    # Persistent connections, one transaction per request: how many DRF apps run.
    "default": dj_database_url.parse(
        _url, conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "60"))
    )
}
DATABASES["default"]["ATOMIC_REQUESTS"] = os.environ.get("DJANGO_ATOMIC_REQUESTS", "1") == "1"

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

if ENABLED:  # outlast: these lines are the whole integration
    from outlast.django import harden_database

    harden_database(DATABASES["default"])  # timeouts and keepalives, merged into OPTIONS
    MIDDLEWARE.insert(0, "outlast.django.OutlastMiddleware")
    OUTLAST = {
        "BUDGET": BUDGET,
        "EXEMPT": ["/api/ping/", "api-root"],  # no database behind these
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "outlast": {"handlers": ["console"], "level": os.environ.get("OUTLAST_LOG_LEVEL", "INFO")}
    },
}
