"""A tiny Django project whose tests run under Django's own test runner.

``DATABASE_URL`` (PostgreSQL) or ``SUITE_SQLITE=1``.
"""

from __future__ import annotations

import os

import dj_database_url

SECRET_KEY = "suite-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "suite_app.urls"
INSTALLED_APPS = ["suite_app"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE = ["outlast.django.OutlastMiddleware"]
OUTLAST = {"BUDGET": 5.0}

if os.environ.get("SUITE_SQLITE") == "1":
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
else:
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
DATABASES["default"]["ATOMIC_REQUESTS"] = True
