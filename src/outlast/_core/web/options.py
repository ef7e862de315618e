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
    "BEFORE_VIEW",
    "DEFAULT_HEALTH_TIMEOUT",
    "FIRST_USE",
    "NOT_ADMITTED",
    "NO_ROUTE",
    "AdmissionMode",
    "DbRoutes",
    "WebConfig",
    "WebOptions",
    "db_route",
    "no_db",
]

#: How long /health/db waits for ``SELECT 1``.
DEFAULT_HEALTH_TIMEOUT: Final = 2.0

DbRoutes = Literal["all", "marked"]
AdmissionMode = Literal["first_use", "before_view"]

#: `WebConfig.admission_for`: the request never gets a 503 from the breaker
#: (a health endpoint, an exempt path, a ``no_db`` view, a 404, a static file).
NOT_ADMITTED: Final = "none"
#: Admitted when it first reaches for the database (pool checkout, connect, ``web.call``).
FIRST_USE: Final = "first_use"
#: Admitted before the view runs (a view marked ``db_route``).
BEFORE_VIEW: Final = "before_view"

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
    - `db_routes` / `exempt`: which views may use the database (``"all"`` but the
      `exempt` path prefixes and `no_db` views, or only ``"marked"`` ones);
    - `admission`: when such a request asks the breaker: ``"first_use"`` (the
      default: when it first reaches for the database -- a pool checkout, a
      connect, ``web.call`` -- so a route that never queries never gets a 503
      and never acts as the half-open probe) or ``"before_view"`` (before the
      view runs, for every database route). Views marked `db_route` are
      always admitted before they run;
    - `answer_margin`: the part of the budget kept for sending the answer
      (default: 0.2 s, or a fifth of a budget under 1 s): the work is cut
      short at ``budget - answer_margin``, so the 503 leaves within the budget;
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
    admission: AdmissionMode
    answer_margin: Seconds | None
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
    admission: AdmissionMode = "first_use"
    answer_margin: float | None = None
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
        if self.admission not in (FIRST_USE, BEFORE_VIEW):
            raise ConfigurationError(
                f"admission must be 'first_use' or 'before_view', not {self.admission!r}"
            )
        if self.answer_margin is not None:
            margin = seconds(self.answer_margin, "answer_margin")
            if margin >= self.budget:
                raise ConfigurationError(
                    f"answer_margin ({margin:g}s) must be shorter than the budget"
                    f" ({self.budget:g}s)"
                )
            set_(self, "answer_margin", margin)
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
        """True when the request at `path` served by `view` may use the database.

        `view` is the view function, None when it is unknown (a mounted
        sub-application), or `NO_ROUTE` when nothing matched (a 404 never gets a
        503 from the breaker) or a static file is served.
        """
        return self.admission_for(path, view) != NOT_ADMITTED

    def admission_for(self, path: str, view: object | None) -> str:
        """When the request at `path` served by `view` asks the breaker.

        `NOT_ADMITTED` (never: health endpoints, `exempt` prefixes, `no_db`
        views, 404s, static files, and unmarked views with
        ``db_routes="marked"``), `BEFORE_VIEW` (views marked `db_route`, and
        every database route with ``admission="before_view"``) or `FIRST_USE`
        (when it first reaches for the database).
        """
        if view is NO_ROUTE or self.is_health_path(path):
            return NOT_ADMITTED
        mark = getattr(view, _MARK, None) if view is not None else None
        if mark is not None:
            return BEFORE_VIEW if mark else NOT_ADMITTED
        if self.db_routes == "marked":
            return NOT_ADMITTED
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.exempt):
            return NOT_ADMITTED
        return FIRST_USE if self.admission == FIRST_USE else BEFORE_VIEW


OPTION_NAMES: Final = frozenset(f.name for f in fields(WebConfig))


# --------------------------------------------------------------------------- route marks

_MARK: Final = "__outlast_db_route__"
#: Passed as `view` when no route matched the request.
NO_ROUTE: Final = object()


def db_route(view: _F) -> _F:
    """Mark a view as a database route: admitted before it runs.

    While the breaker is open it answers 503 at once, before its
    dependencies (authentication, validation) run; while it is half-open it
    may be the probe. Without the mark a view is admitted when it first
    reaches for the database.
    """
    setattr(view, _MARK, True)
    return view


def no_db(view: _F) -> _F:
    """Mark a view as not using the database: no breaker check, no budget."""
    setattr(view, _MARK, False)
    return view
