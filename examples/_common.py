"""Settings shared by the example services (read from the environment, in one place).

- ``DATABASE_URL``: a SQLAlchemy URL (``postgresql+psycopg://user@host:port/db``);
  the Django example accepts the same URL.
- ``OUTLAST_ENABLED``: ``1`` (default) runs the service with outlast, ``0`` runs
  the very same code without it, for the contrast.
- ``OUTLAST_BUDGET``: the request budget in seconds (default 5).
- ``API_TOKEN``: the Bearer token the data routes of the FastAPI and Flask
  examples require (default ``demo-token``).

The table and the tuned Guard and connection settings live in
``outlast.demo._settings``, next to the reference FastAPI service that
``outlast demo`` drills, so every example and the demo share them.
"""

from __future__ import annotations

import os

from outlast.demo._settings import (
    CREATE_TABLE,
    CREATE_WRITES_INDEX,
    CREATE_WRITES_TABLE,
    attempt_reserve,
    settings_from_env,
    web_guard,
    web_hardening,
)

__all__ = [
    "API_TOKEN",
    "BUDGET",
    "CREATE_TABLE",
    "CREATE_WRITES_INDEX",
    "CREATE_WRITES_TABLE",
    "DATABASE_URL",
    "ENABLED",
    "attempt_reserve",
    "web_guard",
    "web_hardening",
]

_settings = settings_from_env()
DATABASE_URL = _settings.database_url
ENABLED = _settings.enabled
BUDGET = _settings.budget
API_TOKEN = os.environ.get("API_TOKEN", "demo-token")
