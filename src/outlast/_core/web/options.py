"""The options of every web integration, declared once.

`WebOptions` names each keyword option and its type; the Flask extension, the
Starlette/FastAPI `install()`, the Django settings (``OUTLAST = {"BUDGET": 3.0,
...}``, the same names in capitals) and `WebBase` all take exactly these and
forward them here. `WebConfig` holds the validated values and the defaults.
A test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, TypeVar

from outlast._core.faults.errors import ConfigurationError
from outlast._core.timing.budget import DEFAULT_BUDGET
from outlast._core.timing.durations import Seconds, seconds

if TYPE_CHECKING:
    from outlast._core.guard.guard import Guard

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
    "NO_ROUTE",
    "DbRoutes",
    "WebConfig",
    "WebOptions",
    "db_route",
    "no_db",
]

#: How long /health/db waits for ``SELECT 1``.
DEFAULT_HEALTH_TIMEOUT: Final = 2.0

DbRoutes = Literal["all", "marked"]

_F = TypeVar("_F", bound=Callable[..., Any])


class WebOptions(TypedDict, total=False):
    """The keyword options of ``outlast.flask.Outlast``, ``outlast.starlette.install``
    and Django's ``settings.OUTLAST`` (defaults in `WebConfig`).

    - `guard`: the `outlast.Guard` of the database (default: one made on first use);
    - `budget`: the longest a database request may take (seconds or timedelta);
    - `health_prefix`: where ``/live``, ``/ready`` and ``/db`` are served;
    - `ready_fail_on_db`: ``/health/ready`` answers 503 while the database is down
      (default: 200 with the database marked ``warn``);
    - `supervisor`: an ``outlast.supervise`` supervisor whose tasks ``/health/ready``
      reports;
    - `session`: a SQLAlchemy session (or scoped session) rolled back after a fault;
    - `engine` / `ping`: what ``/health/db`` runs ``SELECT 1`` through;
    - `db_routes` / `exempt`: which views are database routes (``"all"`` but the
      `exempt` path prefixes and `no_db` views, or only ``"marked"`` ones);
    - `health_timeout`: how long ``/health/db`` waits for its ``SELECT 1``;
    - `ready`: a callable that says whether the service finished starting;
    - `attempt_reserve`: seconds kept back from the budget for one attempt, so a
      retry never starts that could not finish in time;
    - `record_faults`: report faults raised outside the Guard to it.
    """

    guard: Guard | None
    budget: Seconds
    health_prefix: str
    ready_fail_on_db: bool
    supervisor: Any
    session: Any
    engine: Any
    ping: Callable[[], object] | None
    db_routes: DbRoutes
    exempt: Sequence[str]
    health_timeout: Seconds
    ready: Callable[[], bool] | None
    attempt_reserve: Seconds
    record_faults: bool


@dataclass(frozen=True)
class WebConfig:
    """The validated `WebOptions`, with their defaults.

    `db_routes` decides which views are database routes: ``"all"`` (the
    default: every view except health endpoints, `exempt` path prefixes and
    views marked `no_db`) or ``"marked"`` (only views marked `db_route`).
    A database route is admitted with ``guard.admit()`` before the view runs
    (an open breaker answers 503 in microseconds without touching the
    database; a half-open one lets one request through as the probe) and gets
    the request budget.
    """

    guard: Guard | None = None
    budget: float = DEFAULT_BUDGET
    health_prefix: str = "/health"
    ready_fail_on_db: bool = False
    supervisor: Any = None
    session: Any = None
    engine: Any = None
    ping: Callable[[], object] | None = None
    db_routes: DbRoutes = "all"
    exempt: tuple[str, ...] = ()
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    ready: Callable[[], bool] | None = None
    attempt_reserve: float = 0.0
    record_faults: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "budget", seconds(self.budget, "budget", allow_zero=False))
        set_(
            self, "health_timeout", seconds(self.health_timeout, "health_timeout", allow_zero=False)
        )
        set_(self, "attempt_reserve", seconds(self.attempt_reserve, "attempt_reserve"))
        if self.db_routes not in ("all", "marked"):
            raise ConfigurationError(f"db_routes must be 'all' or 'marked', not {self.db_routes!r}")
        given: object = self.exempt  # any Sequence[str] at run time; a lone str is one prefix
        exempt = (given,) if isinstance(given, str) else tuple(self.exempt)
        if not all(isinstance(p, str) for p in exempt):
            raise ConfigurationError(f"exempt must be path prefixes (strings), not {self.exempt!r}")
        set_(self, "exempt", exempt)
        if not isinstance(self.health_prefix, str):
            raise ConfigurationError(f"health_prefix must be a path, not {self.health_prefix!r}")
        set_(self, "health_prefix", "/" + self.health_prefix.strip("/"))
        for name in ("ready_fail_on_db", "record_faults"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name} must be True or False")
        for name in ("ping", "ready"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigurationError(f"{name} must be callable, not {value!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> WebConfig:
        """Validate keyword options (`WebOptions`); unknown names are a `ConfigurationError`."""
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise ConfigurationError(f"unknown option(s): {', '.join(unknown)}")
        return cls(**options)

    def is_health_path(self, path: str) -> bool:
        """True for the health endpoints under `health_prefix` (never database routes)."""
        prefix = self.health_prefix
        return path == prefix or path.startswith(prefix + "/")

    def is_db_route(self, path: str, view: object | None) -> bool:
        """True when the request at `path` served by `view` uses the database.

        `view` is the view function, None when it is unknown (a mounted
        sub-application), or `NO_ROUTE` when nothing matched (a 404 never gets a
        503 from the breaker).
        """
        if view is NO_ROUTE or self.is_health_path(path):
            return False
        mark = getattr(view, _MARK, None) if view is not None else None
        if mark is not None:
            return bool(mark)
        if self.db_routes == "marked":
            return False
        return not any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.exempt)


OPTION_NAMES: Final = frozenset(f.name for f in fields(WebConfig))


# --------------------------------------------------------------------------- route marks

_MARK: Final = "__outlast_db_route__"
#: Passed as `view` when no route matched the request.
NO_ROUTE: Final = object()


def db_route(view: _F) -> _F:
    """Mark a view as a database route (checked against the breaker first)."""
    setattr(view, _MARK, True)
    return view


def no_db(view: _F) -> _F:
    """Mark a view as not using the database: no breaker check, no budget."""
    setattr(view, _MARK, False)
    return view
