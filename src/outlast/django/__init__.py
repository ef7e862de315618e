"""Django: 503 with ``Retry-After`` while the database is down, and honest health endpoints.

settings.py::

    MIDDLEWARE = [
        "outlast.django.OutlastMiddleware",      # first, or right after SecurityMiddleware
        ...
    ]
    OUTLAST = {
        "GUARD": "myproject.db.guard",   # dotted path to an outlast.Guard (or the Guard)
        "BUDGET": 5.0,                   # seconds per database request
        "EXEMPT": ["/api/ping"],         # path prefixes that never touch the database
        "READY_FAIL_ON_DB": False,
        "SUPERVISOR": None,              # dotted path to an outlast.supervise supervisor
        "DATABASE": "default",           # the alias /health/db pings
    }

urls.py::

    path("health/", include("outlast.django.urls")),

The middleware starts the request budget and admits the request with
``guard.admit()`` before every database view (all views except `EXEMPT`
prefixes, the health views and views decorated with `no_db`; with
``"DB_ROUTES": "marked"`` only views decorated with `db_route`): an open
breaker answers 503 at once, and while it is half-open one request at a time
reaches the database as the probe (ORM queries included) while the others get
a fast 503; the probe is released when the middleware returns, whatever the
view did. It turns `DatabaseUnavailable`, `CommitOutcomeUnknown`
and every classified database fault except PERMANENT ones into a 503
``application/problem+json`` with ``Retry-After`` (PERMANENT: a generic 500),
logs each fault once on the ``outlast`` logger and reports it to the Guard.
Django closes a connection that saw an error at the end of the request, and
``ATOMIC_REQUESTS`` rolls the transaction back, so there is no session to roll
back by hand.

Writes: ``runtime().transaction(connection, fn, ...)`` runs ``fn(connection)``
(ORM code as usual) in one transaction within the rest of the budget,
re-run whole after a fault before COMMIT; a lost COMMIT is resolved with
``pg_xact_status()``, never sent again, and a request that fails while it is
unresolved answers 503 ``OUTCOME_UNKNOWN``. Not inside ``atomic()`` /
``ATOMIC_REQUESTS`` (see `outlast.django._transaction`).
"""

from __future__ import annotations

from outlast._core.faults.errors import RequestBudgetExceeded
from outlast._core.timing.budget import budget_remaining
from outlast._core.web.options import db_route, no_db
from outlast.django import _transaction  # noqa: F401 - teaches Guard.transaction Django connections
from outlast.django._middleware import OutlastMiddleware, runtime

__all__ = [
    "OutlastMiddleware",
    "RequestBudgetExceeded",
    "budget_remaining",
    "db_route",
    "no_db",
    "runtime",
]
