"""Settings shared by the example services (read from the environment, in one place).

- ``DATABASE_URL``: a SQLAlchemy URL (``postgresql+psycopg://user@host:port/db``);
  the Django example accepts the same URL.
- ``OUTLAST_ENABLED``: ``1`` (default) runs the service with outlast, ``0`` runs
  the very same code without it, for the contrast.
- ``OUTLAST_BUDGET``: the request budget in seconds (default 5).
"""

from __future__ import annotations

import os

DATABASE_URL = os.environ.get(
    "DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ENABLED = os.environ.get("OUTLAST_ENABLED", "1").strip().lower() not in ("0", "false", "no", "off")
BUDGET = float(os.environ.get("OUTLAST_BUDGET", "5"))

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS leads ("
    " id text PRIMARY KEY,"
    " name text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)


def web_guard():  # type: ignore[no-untyped-def]
    """A Guard tuned for a web service: short breaker periods, so recovery is fast."""
    import outlast

    return outlast.Guard(
        "main",
        # Open for 0.5 s after 3 straight failures, at most 1 s: a recovered
        # database is noticed within a second.
        breaker=outlast.Breaker(failure_threshold=3, open_for=0.5, max_open_for=1.0),
    )


def web_hardening():  # type: ignore[no-untyped-def]
    """Connection settings that fit a 5 s request budget."""
    from outlast.sqlalchemy import Hardening

    return Hardening(
        name="web",
        connect_timeout=2.0,
        tcp_user_timeout=3.0,
        statement_timeout=1.5,
        deadline_grace=0.5,
        ping_timeout=0.5,
        pool_timeout=1.0,
    )


def attempt_reserve(h) -> float:  # type: ignore[no-untyped-def]
    """The worst case of one database attempt under these settings."""
    return max(h.check_budget, h.ping_timeout + (h.statement_deadline or 0.0))
