"""WSGI entry point: ``gunicorn django_app.wsgi:application`` (from ``examples/``)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
