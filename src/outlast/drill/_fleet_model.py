"""The fleet drill's model: its configuration, its results and its checks.

`FleetConfig` is the fleet's shape and the drill's timing; `FleetResult`
holds, for each fleet (`FleetSide`: with outlast, and the same code without
it), the figures per second and per outage (`outlast.drill._fleet_figures`)
and the three checks `judge` makes. `FleetResult.from_dict` reads back what
``outlast demo --fleet --json`` printed, e.g. to plot a saved run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from outlast.drill._fleet_figures import Outage, Second
from outlast.drill._scenarios import builtin

__all__ = [
    "FLEET_SCENARIOS",
    "POOL_PER_WORKER",
    "SIDES",
    "FleetCheck",
    "FleetConfig",
    "FleetResult",
    "FleetSide",
    "judge",
]

FLEET_SCENARIOS = ("down", "restart", "neon_endpoint_disabled", "too_many_connections")
#: The reference service's pool: SQLAlchemy's QueuePool, ``pool_size=10`` plus
#: its default ``max_overflow=10``.
POOL_PER_WORKER = 20
SIDES = {"outlast": True, "plain": False}


@dataclass(frozen=True)
class FleetConfig:
    """The fleet's shape and the drill's timing (keyword-only; seconds as floats).

    `max_connections` None: three sessions per worker plus the superuser
    reserve, well below the fleet's total pool (`POOL_PER_WORKER` per worker)
    and above what its steady load needs. `interval` and `clients`: each
    worker gets `clients` concurrent clients, each sending one request at a
    time, one every `interval` seconds (10 a second by default).
    `storm_limit`: the login attempts per worker that a fleet with outlast may
    not exceed in any second. When an outage starts, a worker with outlast
    logs in three times before its breaker opens (``failure_threshold=3``),
    once more for its background loop, then once per breaker period, which
    is 0.25 s to 0.5 s the first time: at most 6 in that second. When the
    database returns it reconnects its working set (a request and its loop:
    2). A fleet that logs in again for every request goes over as soon as
    each worker serves more than 6 requests a second.
    """

    containers: int = 4
    workers: int = 2
    scenarios: tuple[str, ...] = FLEET_SCENARIOS
    duration: float = 5.0
    warmup: float = 3.0
    observe: float = 5.0
    budget: float = 3.0
    interval: float = 0.1
    clients: int = 1
    max_connections: int | None = None
    max_recovery: float = 2.0
    storm_limit: float = 6.0
    sides: tuple[str, ...] = ("outlast", "plain")
    start_timeout: float = 180.0

    def __post_init__(self) -> None:
        if not 1 <= self.containers <= 64 or not 1 <= self.workers <= 64:
            raise ValueError("containers and workers must be between 1 and 64")
        for name in self.sides:
            if name not in SIDES:
                raise ValueError(f"unknown side {name!r}: outlast or plain")
        for name in self.scenarios:
            builtin(name, duration=self.duration, budget=self.budget)  # raises if unknown
        if not 1 <= self.clients <= 16:
            raise ValueError("clients must be between 1 and 16")
        if self.max_connections is not None and self.max_connections < 5:
            raise ValueError("max_connections must be at least 5")

    @property
    def size(self) -> int:
        return self.containers * self.workers

    @property
    def server_limit(self) -> int:
        return self.max_connections or 3 * self.size + 3

    @property
    def shape(self) -> str:
        return f"{self.containers}x{self.workers}"


@dataclass(frozen=True)
class FleetCheck:
    name: str
    title: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass
class FleetSide:
    """One fleet's run: `seconds` (per-second figures), `outages` (per scenario), checks."""

    label: str
    enabled: bool
    workers: int
    seconds: list[Second]
    outages: list[Outage]
    checks: list[FleetCheck]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def peak_attempts(self) -> int:
        return max((o.peak_attempts for o in self.outages), default=0)

    @property
    def server_53300(self) -> int:
        return sum(s.server_53300 for s in self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "outlast": self.enabled,
            "passed": self.passed,
            "error": self.error,
            "workers": self.workers,
            "checks": [c.as_dict() for c in self.checks],
            "outages": [o.as_dict() for o in self.outages],
            "seconds": [s.as_dict() for s in self.seconds],
        }


@dataclass
class FleetResult:
    config: FleetConfig
    sides: list[FleetSide]
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    duration: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether the fleet with outlast passed every check."""
        return all(s.passed for s in self.sides if s.enabled)

    def side(self, enabled: bool) -> FleetSide | None:
        return next((s for s in self.sides if s.enabled is enabled), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FleetResult:
        """A result read back from `as_dict` (``outlast demo --fleet --json``).

        The checks are judged again on the figures (with the default limits).
        """
        containers, workers = (int(n) for n in str(data["shape"]).split("x"))
        config = FleetConfig(
            containers=containers,
            workers=workers,
            scenarios=tuple(w["scenario"] for w in data["windows"]),
            max_connections=int(data["max_connections"]),
            sides=tuple("outlast" if s["outlast"] else "plain" for s in data["sides"]),
        )
        sides = []
        for raw in data["sides"]:
            seconds = [
                Second(
                    s["at"],
                    s["attempts"],
                    s["logins"],
                    s["injected_53300"],
                    s["server_53300"],
                    s["server_connections"],
                    s["ok"],
                    s["503"],
                    s["errors"],
                )
                for s in raw["seconds"]
            ]
            outages = [
                Outage(
                    scenario=o["scenario"],
                    start=o["start"],
                    returned=o["returned"],
                    end=o["end"],
                    peak_attempts=o["peak_attempts_per_s"],
                    attempts=o["attempts"],
                    injected_53300=o["injected_53300"],
                    server_53300=o["server_53300"],
                    peak_server_connections=o["peak_server_connections"],
                    unavailable=o["503"],
                    errors=o["errors"],
                    first_200=o["first_200"],
                    last_200=o["last_200"],
                    silent=o["workers_not_serving"],
                )
                for o in raw["outages"]
            ]
            side = FleetSide(
                raw["label"], bool(raw["outlast"]), int(raw["workers"]), seconds, outages, []
            )
            side.error = raw.get("error")
            side.checks = judge(side, config)
            sides.append(side)
        windows = [(w["scenario"], float(w["start"]), float(w["end"])) for w in data["windows"]]
        return cls(config, sides, windows, float(data.get("duration", 0.0)))

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "shape": c.shape,
            "workers": c.size,
            "max_connections": c.server_limit,
            "pool_total": c.size * POOL_PER_WORKER,
            "passed": self.passed,
            "duration": round(self.duration, 1),
            "windows": [
                {"scenario": n, "start": round(a, 3), "end": round(b, 3)}
                for n, a, b in self.windows
            ],
            "sides": [s.as_dict() for s in self.sides],
        }


def judge(side: FleetSide, config: FleetConfig) -> list[FleetCheck]:
    """The fleet drill's three promises, judged on one side's figures."""
    limit = config.storm_limit * side.workers
    peak = side.peak_attempts
    refused = side.server_53300
    late = [o for o in side.outages if o.last_200 is None or o.last_200 > config.max_recovery]
    worst = max((o.last_200 or 0.0 for o in side.outages), default=0.0)
    serving = (
        f"the last worker served {worst:.2f} s after the database returned"
        if not late
        else "; ".join(
            f"{o.scenario}: "
            + (
                f"{o.silent} worker(s) never served"
                if o.last_200 is None
                else f"the last worker served after {o.last_200:.2f} s"
            )
            for o in late
        )
    )
    return [
        FleetCheck(
            "no_storm",
            f"login attempts <= {limit:g}/s",
            peak <= limit,
            f"peak {peak} login attempts in one second ({config.storm_limit:g} per worker allowed)",
        ),
        FleetCheck(
            "no_53300",
            "no 53300 from the fleet's reconnects",
            refused == 0,
            f"the server refused {refused} of the fleet's logins with 53300",
        ),
        FleetCheck(
            "serving",
            f"every worker serves <= {config.max_recovery:g} s after the database returns",
            not late,
            serving,
        ),
    ]
