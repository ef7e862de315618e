"""outlast keeps PostgreSQL-backed Python services up while their database is not.

The core (this package's private ``_*`` modules) imports only the standard
library. Integrations live in public submodules (``outlast.sqlalchemy``,
``outlast.flask``, ...) and are installed through extras.
"""

from __future__ import annotations

from ._backoff import Backoff, Retry
from ._breaker import Breaker
from ._classify import classify
from ._clock import Clock
from ._dsn import parse_dsn
from ._errors import (
    CommitOutcomeUnknown,
    ConfigurationError,
    DatabaseNotReady,
    DatabaseUnavailable,
    OutlastError,
)
from ._events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    DatabaseDown,
    DatabaseRecovered,
    Event,
    RetryGaveUp,
    RetryScheduled,
    log_event,
)
from ._fault import Fault, FaultKind
from ._guard import Guard
from ._hardening import Hardening, preset_for
from ._loop import loop
from ._redact import redact
from ._state import DatabaseState
from ._transaction_adapters import register_adapter
from ._version import __version__
from ._wait import WaitAttempt, wait_for_database
from ._web import RequestBudgetExceeded, budget_remaining

__all__ = [
    "Backoff",
    "Breaker",
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "Clock",
    "CommitOutcomeUnknown",
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
