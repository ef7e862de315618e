"""Drive a service through scenarios while traffic flows, then judge it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from outlast.drill._api import Auth, AuthError, JsonTemplate
from outlast.drill._checks import ScenarioResult, evaluate
from outlast.drill._ledger import Ledger, LedgerResult, read_back, read_each
from outlast.drill._metrics import MetricsPoller, delta
from outlast.drill._scenarios import FaultWindow, Injector, Scenario, exercised, play
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
    #: outlast's Prometheus metrics, scraped around each scenario when the
    #: service serves them (None: never asked for).
    metrics_path: str | None = "/metrics"
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
    #: Sent with every request (``--header``); never shown anywhere.
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    #: How to get a token before the drill starts (``--token-command``, ``--login``).
    auth: Auth | None = field(default=None, repr=False)
    write_body: JsonTemplate | None = None  # None: {"id", "name", "email"}
    write_id: str | None = None  # where a write's answer holds the service's own id
    read_one: Route | None = None  # per-id reads for read-back, "{id}" in the path

    def readback_route(self) -> Route | None:
        if self.readback is not None:
            return self.readback
        if self.read is None or self.read_one is not None:
            return None  # per-id reads were asked for instead
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

    @property
    def not_exercised_only(self) -> bool:
        """Not a pass only because some scenarios' faults never fired."""
        return (
            not self.passed
            and self.error is None
            and (self.ledger is None or self.ledger.passed)
            and bool(self.scenarios)
            and all(s.passed or s.verdict == "not exercised" for s in self.scenarios)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "url": self.url,
            "budget": self.budget,
            "passed": self.passed,
            "not_exercised": [s.name for s in self.scenarios if s.verdict == "not exercised"],
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
            write_body=config.write_body.render if config.write_body is not None else None,
            headers=config.headers,
            write_id=config.write_id,
        )
        self.metrics = (
            MetricsPoller(
                config.url, config.metrics_path, clock=self.clock, headers=self.traffic.headers
            )
            if config.metrics_path
            else None
        )
        self.scenario: str = "starting"
        self.phase: str = "waiting for the service"
        self.done = False

    @property
    def records(self) -> list[RequestRecord]:
        return self.traffic.records

    def _client(self, timeout: float = 5.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.config.url,
            headers=self.traffic.headers,
            timeout=timeout,
            trust_env=False,
        )

    async def _wait_service(self) -> str | None:
        """Wait until the service answers at all (any status below 500).

        The probe prefers routes that need no credentials (liveness, the
        no-database route); a 401 or 403 from a data route also means the
        service is up (`_check_access` then says whether the drill may in).
        """
        cfg = self.config
        probe = cfg.live or cfg.ping or cfg.read
        if probe is None:
            return None
        end = time.monotonic() + cfg.start_timeout
        last = "no answer"
        async with self._client() as c:
            while time.monotonic() < end:
                try:
                    r = await c.request(probe.method, probe.path)
                    if r.status_code < 500:
                        return None
                    last = f"{probe} answered {r.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{probe}: {type(exc).__name__}"
                await asyncio.sleep(0.3)
        return f"the service at {cfg.url} is not answering ({last})"

    async def _authenticate(self) -> str | None:
        """Get the token (``--token-command`` or ``--login``) and send it from now on."""
        auth = self.config.auth
        if auth is None or not auth.needed:
            return None
        try:
            if auth.token_command is not None:
                token = await asyncio.to_thread(auth.run_command)
            else:
                assert auth.login_path is not None
                async with self._client(timeout=self.config.budget + 5.0) as c:
                    r = await c.request(auth.login_method, auth.login_path, json=auth.login_body)
                    try:
                        body = r.json()
                    except ValueError:
                        body = None
                token = auth.token_from(r.status_code, body)
            name, value = auth.header_for(token)
        except AuthError as exc:
            return f"could not get credentials: {exc}"
        except httpx.HTTPError as exc:
            return f"could not get credentials: the login request failed ({type(exc).__name__})"
        self.traffic.headers[name] = value
        return None

    async def _check_access(self) -> str | None:
        """Fail at once, and say why, when a data route refuses the drill's credentials."""
        route = self.config.read
        if route is None:
            return None
        async with self._client(timeout=self.config.budget + 1.0) as c:
            try:
                r = await c.request(route.method, route.path)
            except httpx.HTTPError:
                return None  # the drill itself will see what this means
        if r.status_code in (401, 403):
            return (
                f"{route} answered {r.status_code}: the service refuses the drill's requests;"
                " pass credentials with --header, --token-command or --login"
            )
        if r.status_code == 404:
            return f"{route} answered 404: check --read (and --url)"
        return None

    def _recovered_since(self, t: float) -> bool:
        return any(
            r.kind in {"read", "write"} and r.outcome == "ok" and r.start >= t
            for r in reversed(self.traffic.records[-400:])
        )

    async def run(self) -> DrillResult:
        cfg = self.config
        started = self.clock()
        error = (
            await self._wait_service() or await self._authenticate() or await self._check_access()
        )
        if error is not None:
            self.done = True
            return DrillResult(cfg.label, cfg.url, cfg.budget, [], [], [], None, 0.0, error)
        bound = sum(
            cfg.warmup + s.length + cfg.max_recovery + cfg.budget + cfg.settle + 30.0
            for s in cfg.scenarios
        )
        traffic_task = asyncio.create_task(self.traffic.run(self.clock() + bound))
        metrics_task = (
            asyncio.create_task(self.metrics.run(self.clock() + bound)) if self.metrics else None
        )
        results: list[ScenarioResult] = []
        try:
            for scenario in cfg.scenarios:
                results.append(await self._one(scenario))
        finally:
            self.traffic.stop()
            await traffic_task
            if self.metrics is not None and metrics_task is not None:
                self.metrics.stop()
                await metrics_task
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
            if self.metrics is not None and self.metrics.supported:
                res.metrics = delta(self.metrics.scrapes, res.start, res.end)
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
        await self._scrape()
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
        end = self.clock()
        await self._scrape()
        return ScenarioResult(
            scenario.name, start, end, windows, error=error, exercised=exercised(windows)
        )

    async def _scrape(self) -> None:
        """Scrape the metrics at a scenario's edge (the poller fills in between)."""
        if self.metrics is not None:
            await self.metrics.scrape()

    async def _check_ledger(self, results: list[ScenarioResult]) -> LedgerResult | None:
        """Read every write back (a listing, per-id reads, or both) and judge the ledger."""
        cfg = self.config
        route = cfg.readback_route()
        if cfg.write is None or (route is None and cfg.read_one is None) or not self.ledger.entries:
            return None
        present: Counter[str] = Counter()
        checked: set[str] | None = None  # None: every write could be looked up
        error: str | None = None
        async with self._client(timeout=cfg.budget + 5.0) as client:
            if route is not None:
                listed, error = await read_back(
                    client, self.ledger, route.method, route.path, timeout=cfg.readback_timeout
                )
                present.update(listed or {})
            if error is None and cfg.read_one is not None:
                found, looked_up, error = await read_each(
                    client,
                    self.ledger,
                    cfg.read_one.path,
                    by_service_id=cfg.write_id is not None,
                    timeout=cfg.readback_timeout * 2,
                )
                for write_id, n in (found or {}).items():
                    present[write_id] = max(present[write_id], n)
                if route is None:
                    checked = looked_up
        if error is not None:
            for res in results:
                res.ledger = LedgerResult(read_ok=False, read_error=error)
            return LedgerResult(read_ok=False, read_error=error)
        listed_all = route is not None
        for res in results:
            res.ledger = self.ledger.check(
                present, window=(res.start, res.end), checked=checked, listed=listed_all
            )
        return self.ledger.check(present, checked=checked, listed=listed_all)


async def run_drill(
    config: DrillConfig,
    injector: Injector | None,
    *,
    restart: Callable[[], None] | None = None,
) -> DrillResult:
    return await DrillRun(config, injector, restart=restart).run()
