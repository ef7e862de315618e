"""The soak: steady load and a fault every few seconds for minutes, resources sampled.

``outlast drill --soak 10m`` keeps the drill's traffic flowing and cycles
through the scenarios (one fault, its recovery, a little steady load, the next
fault) until the time is up, while a `Sampler` reads the service's memory,
file descriptors, threads, asyncio tasks, pool connections and server
connections every second. It passes only when

- every resource is flat (`outlast.drill._flat`: the last window against the
  first one after warm-up),
- the no-database route's latency did not drift, and
- every fault cycle passed the drill's own checks and no write was lost or
  doubled over the whole run.

A resilience library that leaks a thread, a socket or a connection per outage
takes the service down hours later, when nobody is watching; this is the test
that would notice.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from outlast.drill._checks import ScenarioResult, evaluate
from outlast.drill._flat import RESOURCES, Flatness, Windows, judge, judge_latency, windows_for
from outlast.drill._runner import DrillConfig, DrillResult, DrillRun
from outlast.drill._sample import Sample, Sampler, series
from outlast.drill._scenarios import BUILTIN_SCENARIOS, Injector

__all__ = [
    "SOAK_SCENARIOS",
    "SoakConfig",
    "SoakResult",
    "SoakRun",
    "parse_length",
    "run_soak",
]

#: Every built-in scenario but a real server restart (which needs a managed
#: server or ``--restart-command``; add it with ``--scenarios``).
SOAK_SCENARIOS = ",".join(n for n in BUILTIN_SCENARIOS if n != "restart")

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|)\s*$")


def parse_length(text: str) -> float:
    """``90s``, ``10m``, ``1.5h`` or plain seconds -> seconds."""
    m = _LENGTH.match(str(text).lower())
    if m is None:
        raise ValueError(f"--soak takes a duration such as 90s, 10m or 1h, not {text!r}")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if not 30 <= value <= 24 * 3600:
        raise ValueError("--soak lasts from 30 seconds to 24 hours")
    return value


@dataclass
class SoakConfig:
    """A soak of ``length`` seconds; the drill's config says what to send and inject."""

    drill: DrillConfig
    length: float
    pid: int | None = None
    metrics_path: str | None = "/metrics"
    #: A direct connection for pg_stat_activity; never shown anywhere.
    dsn: str | None = field(default=None, repr=False)
    sample_every: float = 1.0


@dataclass
class SoakResult:
    label: str
    url: str
    length: float
    windows: Windows
    drill: DrillResult
    samples: list[Sample]
    resources: list[Flatness]
    latency: Flatness
    sources: list[str]
    started: float = 0.0  # where the soak's second 0 lies on the drill's clock
    error: str | None = None

    @property
    def cycles(self) -> list[ScenarioResult]:
        return self.drill.scenarios

    @property
    def failed_cycles(self) -> list[ScenarioResult]:
        return [c for c in self.cycles if not c.passed and c.verdict != "not exercised"]

    @property
    def measured(self) -> list[Flatness]:
        return [r for r in self.resources if r.passed is not None]

    @property
    def passed(self) -> bool:
        ledger = self.drill.ledger
        return (
            self.error is None
            and self.drill.error is None
            and bool(self.measured)
            and all(r.passed is not False for r in self.resources)
            and self.latency.passed is not False
            and bool(self.cycles)
            and not self.failed_cycles
            and (ledger is None or ledger.passed)
        )

    def reasons(self) -> list[str]:
        """Why it did not pass, in words (empty when it passed)."""
        out = [e for e in (self.error, self.drill.error) if e]
        out += [f"{r.name} {r.detail}" for r in self.resources if r.passed is False]
        if self.latency.passed is False:
            out.append(f"no-database route latency {self.latency.detail}")
        if not self.measured and not out:
            out.append("no resource could be read (give --pid, serve /metrics, or --dsn)")
        failed: dict[str, int] = {}
        for c in self.failed_cycles:
            failed[c.name] = failed.get(c.name, 0) + 1
        out += [f"{n} of the {name} faults failed the drill's checks" for name, n in failed.items()]
        ledger = self.drill.ledger
        if ledger is not None and not ledger.passed:
            out.append(
                ledger.read_error
                or f"writes: {len(ledger.lost)} lost, {len(ledger.duplicated)} doubled"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "url": self.url,
            "soak_seconds": self.length,
            "passed": self.passed,
            "reasons": self.reasons(),
            "windows": self.windows.as_dict(),
            "sources": self.sources,
            "resources": [r.as_dict() for r in self.resources],
            "latency": self.latency.as_dict(),
            "faults": len(self.cycles),
            "faults_failed": len(self.failed_cycles),
            "samples": [s.as_dict() for s in self.samples],
            "drill": self.drill.as_dict(),
            "error": self.error,
        }


class SoakRun:
    """One soak in progress (`phase` and `drill` are for progress displays)."""

    def __init__(
        self,
        config: SoakConfig,
        injector: Injector | None,
        *,
        restart: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.drill = DrillRun(config.drill, injector, restart=restart)
        self.sampler: Sampler | None = None
        self.started: float | None = None

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.drill.clock() - self.started

    async def _metrics_path(self, client: httpx.AsyncClient) -> str | None:
        """The metrics path if the service serves it (a 404 means it does not)."""
        path = self.config.metrics_path
        if not path:
            return None
        try:
            r = await client.get(path)
        except httpx.HTTPError:
            return path  # it may come up: the sampler will say
        return None if r.status_code == 404 else path

    async def run(self) -> SoakResult:
        cfg, drill = self.config, self.drill
        dcfg = drill.config
        windows = windows_for(cfg.length)
        error = (
            await drill._wait_service()
            or await drill._authenticate()
            or await drill._check_access()
        )
        empty = DrillResult(dcfg.label, dcfg.url, dcfg.budget, [], [], [], None, 0.0, error)
        if error is not None:
            drill.done = True
            return self._result(empty, windows, [], error)
        async with httpx.AsyncClient(
            base_url=dcfg.url, headers=drill.traffic.headers, timeout=5.0, trust_env=False
        ) as client:
            started = self.started = drill.clock()
            sampler = self.sampler = Sampler(
                clock=lambda: drill.clock() - started,
                pid=cfg.pid,
                client=client,
                metrics_path=await self._metrics_path(client),
                dsn=cfg.dsn,
                every=cfg.sample_every,
            )
            end = started + cfg.length
            traffic = asyncio.create_task(drill.traffic.run(end + 5.0))
            sampling = asyncio.create_task(sampler.run())
            cycles: list[ScenarioResult] = []
            try:
                i = 0
                scenarios = list(dcfg.scenarios)
                while scenarios:
                    scenario = scenarios[i % len(scenarios)]
                    # A whole cycle: steady load, the fault, its recovery, settling.
                    need = dcfg.warmup + scenario.length + dcfg.settle + 1.0
                    if drill.clock() + need > end:
                        break
                    cycles.append(await drill._one(scenario))
                    i += 1
                drill.scenario, drill.phase = "steady load", "until the end"
                await asyncio.sleep(max(0.0, end - drill.clock()))
            finally:
                sampler.stop()
                drill.traffic.stop()
                await asyncio.gather(traffic, sampling, return_exceptions=True)
                if drill.injector is not None:
                    try:
                        await asyncio.to_thread(drill.injector.clear)
                    except Exception:
                        pass
        drill.phase = "reading writes back"
        ledger = await drill._check_ledger(cycles)
        for res in cycles:
            evaluate(
                res,
                drill.traffic.records,
                drill.traffic.health,
                budget=dcfg.budget,
                max_recovery=dcfg.max_recovery,
                has_ping=dcfg.ping is not None,
                has_live=dcfg.live is not None,
                health_supported=drill.traffic.health_supported,
            )
        drill.done = True
        drill.phase = "done"
        result = DrillResult(
            dcfg.label,
            dcfg.url,
            dcfg.budget,
            cycles,
            drill.traffic.records,
            drill.traffic.health,
            ledger,
            drill.clock() - started,
        )
        return self._result(result, windows, sampler.samples, None, sorted(sampler.sources))

    def _result(
        self,
        drill: DrillResult,
        windows: Windows,
        samples: list[Sample],
        error: str | None,
        sources: list[str] | None = None,
    ) -> SoakResult:
        started = self.started or 0.0
        resources = [judge(name, series(samples, name), windows) for name in RESOURCES]
        pings = [
            (r.start - started, r.latency)
            for r in drill.records
            if r.kind == "ping" and r.outcome == "ok"
        ]
        return SoakResult(
            drill.label,
            drill.url,
            self.config.length,
            windows,
            drill,
            samples,
            resources,
            judge_latency(pings, windows),
            sources or [],
            started,
            error,
        )


async def run_soak(
    config: SoakConfig,
    injector: Injector | None,
    *,
    restart: Callable[[], None] | None = None,
) -> SoakResult:
    return await SoakRun(config, injector, restart=restart).run()
