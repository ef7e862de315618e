"""outlast keeps PostgreSQL-backed Python services up while their database is not.

The core (this package's private ``_*`` modules) imports only the standard
library. Integrations live in public submodules (``outlast.sqlalchemy``,
``outlast.flask``, ...) and are installed through extras.
"""

from __future__ import annotations

from ._errors import (
    CommitOutcomeUnknown,
    ConfigurationError,
    DatabaseNotReady,
    DatabaseUnavailable,
    OutlastError,
)
from ._fault import Fault, FaultKind
from ._version import __version__

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "DatabaseNotReady",
    "DatabaseUnavailable",
    "Fault",
    "FaultKind",
    "OutlastError",
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("outlast._"):
        try:
            _obj.__module__ = "outlast"
        except (AttributeError, TypeError):  # pragma: no cover - builtins, constants
            pass
del _name, _obj
