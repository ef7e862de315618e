"""Settings for the Django example (everything from the environment)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import BUDGET, DATABASE_URL, ENABLED

_url = urlsplit(DATABASE_URL)

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_app.urls"
INSTALLED_APPS = ["django_app"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_options: dict[str, object] = {}
if ENABLED:
    # Hardened connections: a dead or frozen link fails in seconds, not minutes.
    _options = {
        "connect_timeout": 2,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "tcp_user_timeout": 3000,
        "options": "-c statement_timeout=1500 -c idle_in_transaction_session_timeout=10000",
    }

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(_url.path.lstrip("/")) or "postgres",
        "USER": unquote(_url.username or "postgres"),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
        # Persistent connections (the usual production setting). Django's
        # CONN_HEALTH_CHECKS stays off (its default): a health check on a dead
        # link plus a reconnect would cost more than one attempt.
        "CONN_MAX_AGE": int(os.environ.get("DJANGO_CONN_MAX_AGE", "60")),
        "OPTIONS": _options,
    }
}

MIDDLEWARE: list[str] = []
if ENABLED:
    MIDDLEWARE = ["outlast.django.OutlastMiddleware"]
    OUTLAST = {
        "GUARD": "django_app.db.guard",
        "BUDGET": BUDGET,
        "EXEMPT": ["/api/ping"],
        # Kept back from the budget for the last attempt of a transaction (a
        # 2 s connect plus a 1.5 s statement, at most half the budget), so no
        # retry starts that could not finish in time.
        "ATTEMPT_RESERVE": min(2.0 + 1.5, BUDGET / 2),
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"outlast": {"handlers": ["console"], "level": "INFO"}},
}
