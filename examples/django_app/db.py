"""The example's Guard (``OUTLAST["GUARD"] = "django_app.db.guard"``)."""

from __future__ import annotations

from _common import web_guard

guard = web_guard()
