"""Django: 503 with ``Retry-After`` while the database is down, honest health
endpoints, and lost COMMITs resolved for the ORM's ordinary saves.

settings.py::

    from outlast.django import harden_database

    MIDDLEWARE = [
        "outlast.django.OutlastMiddleware",      # first, or right after SecurityMiddleware
        ...
    ]
    DATABASES = {"default": harden_database(dj_database_url.config(conn_max_age=60))}
    OUTLAST = {
        "GUARD": "myproject.db.guard",   # optional: dotted path to an outlast.Guard
        "BUDGET": 5.0,                   # seconds per database request
        "EXEMPT": ["/api/ping", "api-root"],   # paths, path patterns, route patterns, URL names
        "READY_FAIL_ON_DB": False,
        "SUPERVISOR": None,              # dotted path to an outlast.supervise supervisor
        "DATABASE": "default",           # the alias /health/db pings
    }

urls.py::

    path("health/", include("outlast.django.urls")),

The middleware starts the request budget and admits the request with
``guard.admit()`` before every database view (all views except ``EXEMPT``
routes, the health views and views or view classes decorated with `no_db`;
with ``"DB_ROUTES": "marked"`` only those decorated with `db_route`): an open
breaker answers 503 at once, and while it is half-open one request at a time
reaches the database as the probe. With ``ATOMIC_REQUESTS`` the views that are
not database routes run outside Django's request transaction, so they answer
while the database is down. Database faults become a 503
``application/problem+json`` with ``Retry-After`` (PERMANENT ones a generic
500), logged once on the ``outlast`` logger with the route pattern and
reported to the Guard.

Writes (`outlast.django._commit`): every COMMIT Django sends during a request
(``ATOMIC_REQUESTS``, ``atomic()`` blocks) is guarded: if its reply is lost,
``pg_xact_status()`` decides -- committed: the response goes out; aborted: 503
``SERVICE_UNAVAILABLE`` (nothing was written); unknown within the budget: 503
``OUTCOME_UNKNOWN``. A write sent in autocommit mode whose connection died is
``OUTCOME_UNKNOWN``. ``runtime().transaction(connection, fn, ...)`` also
re-runs ``fn`` whole after a fault before COMMIT (in a savepoint, run once,
inside ``atomic()``).
"""

from __future__ import annotations

from outlast._core.faults.errors import RequestBudgetExceeded
from outlast._core.timing.budget import budget_remaining
from outlast._core.web.options import db_route, no_db
from outlast.django import _transaction  # noqa: F401 - teaches Guard.transaction Django connections
from outlast.django._middleware import OutlastMiddleware, runtime
from outlast.django._settings import harden_database

__all__ = [
    "OutlastMiddleware",
    "RequestBudgetExceeded",
    "budget_remaining",
    "db_route",
    "harden_database",
    "no_db",
    "runtime",
]
