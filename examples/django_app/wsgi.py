"""WSGI entry point: ``gunicorn django_app.wsgi:application`` (from ``examples/``)."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()


def _create_table() -> None:
    from _common import CREATE_TABLE
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute(CREATE_TABLE)
    except Exception as exc:  # the database may be late: serve anyway
        logging.getLogger("example").warning("could not create leads yet: %s", type(exc).__name__)
    finally:
        connection.close()


_create_table()
