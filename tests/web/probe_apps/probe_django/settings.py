"""Settings of the Django probe service (connections per request, ORM cursor in the views)."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _probe_common import BUDGET, DATABASE_URL, STATEMENT_TIMEOUT_MS

_url = urlsplit(DATABASE_URL)

SECRET_KEY = "probe-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "probe_django.urls"
INSTALLED_APPS: list[str] = []
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(_url.path.lstrip("/")),
        "USER": unquote(_url.username or "postgres"),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
        # A connection per request: the proxy's connection count is the number
        # of requests that reached the database.
        "CONN_MAX_AGE": 0,
        "OPTIONS": {
            "connect_timeout": 2,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        },
    }
}
MIDDLEWARE = ["outlast.django.OutlastMiddleware"]
OUTLAST = {
    "GUARD": "_probe_common.guard",
    "BUDGET": BUDGET,
    "EXEMPT": ["/api/ping", "/api/stats"],
}
