"""What the reference service and the example services share (no web framework here).

- `Settings` / `settings_from_env`: ``DATABASE_URL`` (a SQLAlchemy URL,
  ``postgresql+psycopg://user@host:port/db``), ``OUTLAST_ENABLED`` (``1``, the
  default, runs a service with outlast; ``0`` runs the very same code without
  it) and ``OUTLAST_BUDGET`` (the request budget in seconds, default 5).
  ``OUTLAST_MODE`` (``outlast``, ``plain`` or ``seeds``), when set, chooses
  among the reference service's three builds instead of ``OUTLAST_ENABLED``:
  ``seeds`` is the service fixed by hand the usual way (`outlast.demo._seeds`).
- `CREATE_TABLE`: the ``leads`` table the Flask and Django examples use (the
  lead's id is its primary key, so those writes are idempotent).
- `CREATE_WRITES_TABLE`, `CREATE_WRITES_INDEX`: the ``lead_writes`` table of
  the reference FastAPI service (`outlast demo`): a ``bigserial`` key and a
  plain, non-unique ``lead_id``, so a write applied twice shows as two rows.
- `web_guard`, `web_hardening`, `attempt_reserve`: a Guard and connection
  settings tuned for a web request budget of a few seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import outlast

__all__ = [
    "CREATE_TABLE",
    "CREATE_WRITES_INDEX",
    "CREATE_WRITES_TABLE",
    "DEFAULT_URL",
    "MODES",
    "Settings",
    "attempt_reserve",
    "settings_from_env",
    "web_guard",
    "web_hardening",
]

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS leads ("
    " id text PRIMARY KEY,"
    " name text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)

CREATE_WRITES_TABLE = (
    "CREATE TABLE IF NOT EXISTS lead_writes ("
    " row_id bigserial PRIMARY KEY,"
    " lead_id text NOT NULL,"  # deliberately not UNIQUE: a doubled write stays visible
    " name text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)
CREATE_WRITES_INDEX = "CREATE INDEX IF NOT EXISTS lead_writes_lead_id ON lead_writes (lead_id)"

_OFF = frozenset({"0", "false", "no", "off"})
MODES = ("outlast", "plain", "seeds")


@dataclass(frozen=True)
class Settings:
    database_url: str
    enabled: bool
    budget: float
    #: ``outlast`` (enabled), ``plain`` or ``seeds`` (the usual fix by hand).
    mode: str = "outlast"


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """`Settings` from ``DATABASE_URL``, ``OUTLAST_ENABLED``/``MODE``, ``OUTLAST_BUDGET``."""
    env = os.environ if environ is None else environ
    enabled = env.get("OUTLAST_ENABLED", "1").strip().lower() not in _OFF
    mode = env.get("OUTLAST_MODE", "").strip().lower() or ("outlast" if enabled else "plain")
    if mode not in MODES:
        raise outlast.ConfigurationError(
            f"OUTLAST_MODE must be one of {', '.join(MODES)}, not {mode!r}"
        )
    return Settings(
        database_url=env.get("DATABASE_URL") or DEFAULT_URL,
        enabled=mode == "outlast",
        budget=float(env.get("OUTLAST_BUDGET", "5")),
        mode=mode,
    )


def web_guard(name: str = "main") -> outlast.Guard:
    """A Guard tuned for a web service run as a fleet: short, jittered breaker periods.

    Open after 3 straight failures for 0.5 s at first, then 1 s, each period
    shortened by up to half at random: once the database is back, the next
    probe (one request, admitted when the period ends) finds it, so the first
    200 comes within a second plus one request, even after a long outage.
    One worker probes about 1.3 times a second during a long outage, and the
    workers of a fleet, whose breakers all tripped at the same moment, probe
    at different moments (``outlast demo --fleet`` measures both).
    """
    return outlast.Guard(
        name,
        breaker=outlast.Breaker(
            failure_threshold=3, open_for=0.5, max_open_for=1.0, open_jitter=0.5
        ),
    )


def web_hardening() -> outlast.Hardening:
    """Connection settings that fit a request budget of 2.5 s or more."""
    return outlast.Hardening(
        name="web",
        connect_timeout=2.0,
        tcp_user_timeout=3.0,
        statement_timeout=1.5,
        deadline_grace=0.5,
        ping_timeout=0.5,
        pool_timeout=1.0,
    )


def attempt_reserve(hardening: outlast.Hardening, budget: float) -> float:
    """How much of the budget to keep for the last database attempt.

    The worst case of one attempt under `hardening`, but at most half the
    budget, so a quick retry (after a terminated session) still fits.
    """
    worst = max(
        hardening.check_budget, hardening.ping_timeout + (hardening.client_statement_timeout or 0)
    )
    return min(worst, budget / 2)
