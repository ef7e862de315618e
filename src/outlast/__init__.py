"""outlast keeps PostgreSQL-backed Python services up while their database is not.

The core (this package's private ``_*`` modules) imports only the standard
library. Integrations live in public submodules (``outlast.sqlalchemy``,
``outlast.flask``, ...) and are installed through extras.
"""

from __future__ import annotations

from outlast._core.connections.dsn import parse_dsn
from outlast._core.connections.hardening import Hardening, preset_for
from outlast._core.connections.wait import WaitAttempt, wait_for_database
from outlast._core.faults.classify import classify
from outlast._core.faults.errors import (
    CommitOutcomeUnknown,
    ConfigurationError,
    DatabaseNotReady,
    DatabaseUnavailable,
    OutlastError,
    RequestBudgetExceeded,
)
from outlast._core.faults.fault import Fault, FaultKind
from outlast._core.faults.redact import redact
from outlast._core.guard.backoff import Backoff, Retry
from outlast._core.guard.breaker import Breaker
from outlast._core.guard.counters import GuardCounters
from outlast._core.guard.events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    CommitResolved,
    DatabaseDown,
    DatabaseRecovered,
    Event,
    RetryGaveUp,
    RetryScheduled,
    log_event,
)
from outlast._core.guard.guard import Guard
from outlast._core.guard.state import DatabaseState
from outlast._core.supervise.loop import loop
from outlast._core.timing.budget import budget_remaining
from outlast._core.timing.clock import Clock
from outlast._core.transactions.adapters import register_adapter

__version__ = "0.1.0.dev0"

__all__ = [
    "Backoff",
    "Breaker",
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "Clock",
    "CommitOutcomeUnknown",
    "CommitResolved",
    "ConfigurationError",
    "DatabaseDown",
    "DatabaseNotReady",
    "DatabaseRecovered",
    "DatabaseState",
    "DatabaseUnavailable",
    "Event",
    "Fault",
    "FaultKind",
    "Guard",
    "GuardCounters",
    "Hardening",
    "OutlastError",
    "RequestBudgetExceeded",
    "Retry",
    "RetryGaveUp",
    "RetryScheduled",
    "WaitAttempt",
    "__version__",
    "budget_remaining",
    "classify",
    "log_event",
    "loop",
    "parse_dsn",
    "preset_for",
    "redact",
    "register_adapter",
    "wait_for_database",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("outlast._"):
        try:
            _obj.__module__ = "outlast"
        except (AttributeError, TypeError):  # pragma: no cover - builtins, constants
            pass
del _name, _obj
