"""``gunicorn probe_django.wsgi:application`` (from ``tests/web/probe_apps``)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "probe_django.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
