"""Drive a service through scenarios while traffic flows, then judge it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from outlast.drill._checks import ScenarioResult, evaluate
from outlast.drill._ledger import Ledger, LedgerResult, read_back
from outlast.drill._scenarios import FaultWindow, Injector, Scenario, play
from outlast.drill._traffic import HealthSample, RequestRecord, Route, Traffic

__all__ = ["DrillConfig", "DrillResult", "DrillRun", "run_drill"]


@dataclass
class DrillConfig:
    url: str
    scenarios: Sequence[Scenario]
    read: Route | None = field(default_factory=lambda: Route("GET", "/api/leads"))
    write: Route | None = field(default_factory=lambda: Route("POST", "/api/leads"))
    ping: Route | None = None
    live: Route | None = field(default_factory=lambda: Route("GET", "/health/live"))
    health_path: str | None = "/health/ready"
    readback: Route | None = None  # default: the read route with ?ids={ids}
    budget: float = 5.0
    margin: float = 1.0
    warmup: float = 2.0
    settle: float = 1.0
    max_recovery: float = 10.0
    interval: float = 0.1
    workers: dict[str, int] = field(default_factory=dict)
    label: str = "service"
    start_timeout: float = 30.0
    readback_timeout: float = 30.0

    def readback_route(self) -> Route | None:
        if self.readback is not None:
            return self.readback
        if self.read is None:
            return None
        sep = "&" if "?" in self.read.path else "?"
        return Route("GET", f"{self.read.path}{sep}ids={{ids}}")


@dataclass
class DrillResult:
    label: str
    url: str
    budget: float
    scenarios: list[ScenarioResult]
    records: list[RequestRecord]
    health: list[HealthSample]
    ledger: LedgerResult | None
    duration: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and bool(self.scenarios)
            and all(s.passed for s in self.scenarios)
            and (self.ledger is None or self.ledger.passed)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "url": self.url,
            "budget": self.budget,
            "passed": self.passed,
            "duration": round(self.duration, 2),
            "error": self.error,
            "requests": len(self.records),
            "writes": self.ledger.as_dict() if self.ledger else None,
            "scenarios": [s.as_dict() for s in self.scenarios],
        }


class DrillRun:
    """One drill in progress; `status` is for live progress displays."""

    def __init__(
        self,
        config: DrillConfig,
        injector: Injector | None,
        *,
        restart: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.injector = injector
        self.restart = restart
        t0 = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - t0)
        self.ledger = Ledger()
        self.traffic = Traffic(
            config.url,
            routes={
                "read": config.read,
                "write": config.write,
                "ping": config.ping,
                "live": config.live,
            },
            budget=config.budget,
            margin=config.margin,
            ledger=self.ledger,
            clock=self.clock,
            workers=config.workers,
            interval=config.interval,
            health_path=config.health_path,
        )
        self.scenario: str = "starting"
        self.phase: str = "waiting for the service"
        self.done = False

    @property
    def records(self) -> list[RequestRecord]:
        return self.traffic.records

    async def _wait_service(self) -> str | None:
        probe = self.config.live or self.config.read or self.config.ping
        if probe is None:
            return None
        end = time.monotonic() + self.config.start_timeout
        last = "no answer"
        async with httpx.AsyncClient(base_url=self.config.url, timeout=5.0, trust_env=False) as c:
            while time.monotonic() < end:
                try:
                    r = await c.request(probe.method, probe.path)
                    if r.status_code < 300:
                        return None
                    last = f"{probe} answered {r.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{probe}: {type(exc).__name__}"
                await asyncio.sleep(0.3)
        return f"the service at {self.config.url} is not answering ({last})"

    def _recovered_since(self, t: float) -> bool:
        return any(
            r.kind in {"read", "write"} and r.outcome == "ok" and r.start >= t
            for r in reversed(self.traffic.records[-400:])
        )

    async def run(self) -> DrillResult:
        cfg = self.config
        started = self.clock()
        error = await self._wait_service()
        if error is not None:
            self.done = True
            return DrillResult(cfg.label, cfg.url, cfg.budget, [], [], [], None, 0.0, error)
        bound = sum(
            cfg.warmup + s.length + cfg.max_recovery + cfg.budget + cfg.settle + 30.0
            for s in cfg.scenarios
        )
        traffic_task = asyncio.create_task(self.traffic.run(self.clock() + bound))
        results: list[ScenarioResult] = []
        try:
            for scenario in cfg.scenarios:
                results.append(await self._one(scenario))
        finally:
            self.traffic.stop()
            await traffic_task
            if self.injector is not None:
                try:
                    await asyncio.to_thread(self.injector.clear)
                except Exception:
                    pass
        self.phase = "reading writes back"
        ledger_total = await self._check_ledger(results)
        for res in results:
            evaluate(
                res,
                self.traffic.records,
                self.traffic.health,
                budget=cfg.budget,
                max_recovery=cfg.max_recovery,
                has_ping=cfg.ping is not None,
                has_live=cfg.live is not None,
                health_supported=self.traffic.health_supported,
            )
        self.done = True
        self.phase = "done"
        return DrillResult(
            cfg.label,
            cfg.url,
            cfg.budget,
            results,
            self.traffic.records,
            self.traffic.health,
            ledger_total,
            self.clock() - started,
        )

    async def _one(self, scenario: Scenario) -> ScenarioResult:
        cfg = self.config
        self.scenario = scenario.name
        start = self.clock()
        self.phase = "baseline"
        await asyncio.sleep(cfg.warmup)
        self.phase = "fault"
        error: str | None = None
        windows: list[FaultWindow] = []
        try:
            windows = await play(scenario, self.injector, self.clock, restart=self.restart)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if self.injector is not None:
                try:
                    await asyncio.to_thread(self.injector.clear)
                except Exception:
                    pass
        fault_end = max((w.end for w in windows), default=self.clock())
        self.phase = "recovering"
        limit = fault_end + cfg.max_recovery + cfg.budget + cfg.margin
        while self.clock() < limit and not self._recovered_since(fault_end):
            await asyncio.sleep(0.1)
        self.phase = "settling"
        await asyncio.sleep(cfg.settle)
        return ScenarioResult(scenario.name, start, self.clock(), windows, error=error)

    async def _check_ledger(self, results: list[ScenarioResult]) -> LedgerResult | None:
        route = self.config.readback_route()
        if self.config.write is None or route is None or not self.ledger.entries:
            return None
        async with httpx.AsyncClient(
            base_url=self.config.url, timeout=self.config.budget + 5.0, trust_env=False
        ) as client:
            present, err = await read_back(
                client, self.ledger, route.method, route.path, timeout=self.config.readback_timeout
            )
        if present is None:
            total = LedgerResult(read_ok=False, read_error=err)
            for res in results:
                res.ledger = LedgerResult(read_ok=False, read_error=err)
            return total
        for res in results:
            res.ledger = self.ledger.check(present, window=(res.start, res.end))
        return self.ledger.check(present)


async def run_drill(
    config: DrillConfig,
    injector: Injector | None,
    *,
    restart: Callable[[], None] | None = None,
) -> DrillResult:
    return await DrillRun(config, injector, restart=restart).run()
