"""Outage scenarios: which faults to inject, when, and for how long.

A `Scenario` is a list of `Step`s. A step is a chaos-proxy fault (``down``,
``reset``, ``blackhole``, ``freeze``, ``latency``, ``reject_login``,
``terminate``, ...; any kind the proxy knows) or ``restart`` (a real server
restart, through a callback when the drill manages the server). Built-in
scenarios are named after what users meet in production; custom ones come
from a TOML file::

    [scenarios.neon-suspend]
    description = "Neon suspends the endpoint: sessions die, logins are refused"
    steps = [
      { fault = "reject_login", at = 0, duration = 8, preset = "neon_endpoint_disabled" },
      { fault = "terminate", at = 0, duration = 0.5 },
    ]
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "BUILTIN_SCENARIOS",
    "FaultWindow",
    "Injector",
    "Scenario",
    "Step",
    "builtin",
    "exercised",
    "load_scenarios",
    "play",
    "resolve",
]

RESTART = "restart"
_PULSE = 0.5  # how long a one-shot fault (terminate) stays armed


class Injector(Protocol):
    """What the drill needs from a chaos proxy.

    An injector may also have ``hits(fault_id) -> int | None`` (how many
    connections or messages the fault acted on, also once it ended; see
    `outlast.chaos.Proxy.fault_info`): with it the drill tells a scenario whose
    fault never fired ("not exercised") from one that passed.
    """

    def add_fault(
        self, kind: str, duration: float | None = None, toxicity: float = 1.0, **params: Any
    ) -> str: ...

    def remove_fault(self, fault_id: str) -> None: ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class Step:
    fault: str
    at: float = 0.0
    duration: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)
    toxicity: float = 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    description: str = ""

    @property
    def length(self) -> float:
        return max((s.at + s.duration for s in self.steps), default=0.0)


@dataclass
class FaultWindow:
    """When a fault was actually armed (seconds since the drill began), and what it hit.

    `hits`: connections or messages the proxy says the fault acted on (None:
    unknown, e.g. an injector that cannot tell, or a restart).
    """

    scenario: str
    fault: str
    start: float
    end: float
    fault_id: str | None = None
    hits: int | None = None


#: Faults that can act without the proxy seeing it: ``down`` closes the port,
#: and the kernel refuses new connections (no hit is counted for those).
_UNSEEN_HITS = frozenset({"down", RESTART})


def exercised(windows: list[FaultWindow]) -> bool | None:
    """Whether the faults did anything: True, False (none fired), None (cannot tell)."""
    if any(w.hits for w in windows) or any(w.fault == RESTART for w in windows):
        return True
    if windows and all(w.hits == 0 and w.fault not in _UNSEEN_HITS for w in windows):
        return False
    return None


async def _hits(injector: Injector | None, fault_id: str | None) -> int | None:
    ask = getattr(injector, "hits", None)
    if ask is None or fault_id is None:
        return None
    try:
        value = await asyncio.to_thread(ask, fault_id)
    except Exception:  # an older proxy, or it forgot the fault: cannot tell
        return None
    return value if isinstance(value, int) else None


BUILTIN_SCENARIOS = (
    "down",
    "reset",
    "blackhole",
    "freeze",
    "latency",
    "neon_endpoint_disabled",
    "starting_up",
    "too_many_connections",
    "terminate",
    "flapping",
    "commit_lost",
    "restart",
)

#: ``commit_lost``: the share of connections whose next COMMIT is cut off.
COMMIT_LOST_TOXICITY = 0.5

_DESCRIPTIONS = {
    "down": "the proxy refuses connections and closes live ones",
    "reset": "every connection is reset (RST)",
    "blackhole": "connections are accepted and never answered",
    "freeze": "live connections stop moving bytes (a frozen database)",
    "latency": "every packet is delayed by the whole request budget",
    "neon_endpoint_disabled": "sessions terminated, logins rejected with Neon's XX000",
    "starting_up": "sessions terminated, logins rejected with 57P03 starting up",
    "too_many_connections": "sessions terminated, logins rejected with 53300",
    "terminate": "every live session gets 57P01 admin shutdown",
    "flapping": "down 2 s, up 2 s, repeatedly",
    "commit_lost": "some COMMITs are applied, but the client never gets the reply",
    "restart": "a real PostgreSQL restart",
}


def builtin(name: str, *, duration: float, budget: float) -> Scenario:
    """A built-in scenario whose faults last ``duration`` seconds."""
    d = float(duration)
    steps: list[Step]
    if name in {"down", "reset", "blackhole", "freeze"}:
        steps = [Step(name, 0.0, d)]
    elif name == "latency":
        steps = [Step("latency", 0.0, d, {"ms": round(budget * 1000)})]
    elif name in {"neon_endpoint_disabled", "starting_up", "too_many_connections"}:
        steps = [
            Step("reject_login", 0.0, d, {"preset": name}),
            Step("terminate", 0.0, _PULSE),
        ]
    elif name == "terminate":
        steps = [Step("terminate", 0.0, _PULSE)]
    elif name == "flapping":
        steps = []
        t = 0.0
        while t + 2.0 <= max(d, 2.0) + 1e-9 and len(steps) < 50:
            steps.append(Step("down", t, 2.0))
            t += 4.0
    elif name == "commit_lost":
        # The proxy lets COMMIT through, waits for the server's answer (so the
        # transaction did commit), and closes the connection instead of
        # passing it on: the client cannot know whether its write happened.
        params = {"pattern": r"^\s*COMMIT\b", "wait_reply": True}
        steps = [Step("cut_after", 0.0, d, params, COMMIT_LOST_TOXICITY)]
    elif name == RESTART:
        steps = [Step(RESTART, 0.0, 0.0)]
    else:
        raise ValueError(
            f"unknown scenario {name!r}; built-in scenarios: {', '.join(BUILTIN_SCENARIOS)}"
        )
    return Scenario(name, tuple(steps), _DESCRIPTIONS[name])


def load_scenarios(path: str | Path) -> dict[str, Scenario]:
    """Custom scenarios from a TOML file (see the module docstring)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    table = data.get("scenarios")
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected a [scenarios.<name>] table")
    out: dict[str, Scenario] = {}
    for name, spec in table.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list):
            raise ValueError(f"{path}: scenario {name!r} needs a 'steps' list")
        steps: list[Step] = []
        for i, raw in enumerate(spec["steps"]):
            if not isinstance(raw, dict) or not isinstance(raw.get("fault"), str):
                raise ValueError(f'{path}: {name} step {i + 1} needs fault = "<kind>"')
            params = {
                k: v for k, v in raw.items() if k not in {"fault", "at", "duration", "toxicity"}
            }
            params.update(raw.get("params", {}) if isinstance(raw.get("params"), dict) else {})
            params.pop("params", None)
            try:
                at = float(raw.get("at", 0.0))
                dur = float(raw.get("duration", _PULSE if raw["fault"] == "terminate" else 0.0))
                tox = float(raw.get("toxicity", 1.0))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: {name} step {i + 1}: at/duration must be numbers"
                ) from None
            if at < 0 or dur < 0 or at > 3600 or dur > 3600:
                raise ValueError(f"{path}: {name} step {i + 1}: at/duration out of range")
            steps.append(Step(raw["fault"], at, dur, params, tox))
        if not steps:
            raise ValueError(f"{path}: scenario {name!r} has no steps")
        out[str(name)] = Scenario(str(name), tuple(steps), str(spec.get("description", "")))
    return out


def resolve(
    names: list[str],
    *,
    duration: float,
    budget: float,
    custom: Mapping[str, Scenario] | None = None,
) -> list[Scenario]:
    custom = custom or {}
    return [
        custom[n] if n in custom else builtin(n, duration=duration, budget=budget) for n in names
    ]


async def play(
    scenario: Scenario,
    injector: Injector | None,
    clock: Callable[[], float],
    *,
    restart: Callable[[], None] | None = None,
) -> list[FaultWindow]:
    """Inject the scenario's faults on schedule; return when each was armed.

    Every fault is removed when its step ends (and the proxy also expires it on
    its own a little later, should the drill die in between).
    """
    t0 = clock()
    windows: list[FaultWindow] = []
    pending: list[tuple[float, str | None, FaultWindow]] = []  # (remove at, id, window)

    async def remove_due(until: float) -> None:
        pending.sort(key=lambda p: p[0])
        while pending and pending[0][0] <= until:
            when, fid, win = pending.pop(0)
            delay = t0 + when - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if fid is not None and injector is not None:
                try:
                    await asyncio.to_thread(injector.remove_fault, fid)
                except Exception:  # already expired on the proxy
                    pass
            win.end = clock()
            win.hits = await _hits(injector, fid)

    for step in sorted(scenario.steps, key=lambda s: s.at):
        await remove_due(step.at)
        delay = t0 + step.at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if step.fault == RESTART:
            if restart is None:
                raise RuntimeError(
                    "the restart scenario needs a managed server (outlast demo) "
                    "or --restart-command"
                )
            win = FaultWindow(scenario.name, RESTART, clock(), clock())
            await asyncio.to_thread(restart)
            win.end = clock()
            windows.append(win)
            continue
        if injector is None:
            raise RuntimeError(f"scenario {scenario.name!r} needs a chaos proxy (--proxy-admin)")
        safety = step.duration + 5.0 if step.duration > 0 else None
        fid = await asyncio.to_thread(
            injector.add_fault, step.fault, safety, step.toxicity, **dict(step.params)
        )
        win = FaultWindow(scenario.name, step.fault, clock(), clock(), fault_id=fid)
        windows.append(win)
        pending.append((step.at + step.duration, fid, win))
    await remove_due(float("inf"))
    return windows
