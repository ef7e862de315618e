"""The fleet drill: one service run as many worker processes, against one small server.

Real deployments are containers x workers, each worker with its own pool and
Guard, all on one database. When the database returns they all reconnect at
once. This drill reproduces that on one machine and measures it:

- per side (the reference service with outlast, and the same code without
  it), one embedded PostgreSQL whose ``max_connections`` is below the fleet's
  total pool size, one chaos proxy in front of it, and ``containers x
  workers`` uvicorn processes, each on its own port (so every worker is seen
  on its own), all logging in as one role (``fleet``);
- steady reads to every worker; the same faults at the same moments on both
  sides (``down``, ``restart``, ``neon_endpoint_disabled``,
  ``too_many_connections`` by default);
- sampled all along: the connections the proxy accepted (login attempts) and
  every login it read (`outlast.chaos.Proxy.logins`), the fleet's sessions in
  ``pg_stat_activity``, the server's own 53300 refusals (from its log, so an
  injected 53300 is never mistaken for one the fleet caused), every answer.

`run_fleet` returns a `FleetResult` (`outlast.drill._fleet_model`): the
figures per second and per outage (`outlast.drill._fleet_figures`) and the
checks, for each side.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outlast.drill._fleet_figures import Answer, Outage, Recording, outage, per_second
from outlast.drill._fleet_model import (
    FLEET_SCENARIOS,
    POOL_PER_WORKER,
    SIDES,
    FleetConfig,
    FleetResult,
    FleetSide,
    judge,
)
from outlast.drill._scenarios import builtin, play

__all__ = ["FLEET_SCENARIOS", "POOL_PER_WORKER", "FleetConfig", "FleetResult", "run_fleet"]

ROLE = "fleet"
_KEEP_LOGINS = 500_000
# The server's 53300 answers: a full server, and a server whose last slots are
# kept for superusers (the fleet's role is not one).
_REFUSED = re.compile(
    rb"^(\d+\.\d+) (\S*) FATAL:  (sorry, too many clients already|remaining connection slots)",
    re.M,
)

Progress = Callable[[str], None]


# --------------------------------------------------------------- processes


class _Worker:
    def __init__(self, index: int, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.index = index
        self.proc = proc
        self.url = url
        self.log = log


class _Fleet:
    """One side: its server, proxy, worker processes and what was recorded."""

    def __init__(self, name: str, config: FleetConfig, workdir: Path) -> None:
        from outlast.chaos import Proxy
        from outlast.testing import EmbeddedPostgres

        self.name = name
        self.enabled = SIDES[name]
        self.config = config
        self.workdir = workdir
        self.pg = EmbeddedPostgres(
            workdir / f"pg-{name}",
            settings={"max_connections": config.server_limit, "log_line_prefix": "%n %u "},
        )
        self.proxy = Proxy(
            ("127.0.0.1", 0), ("127.0.0.1", self.pg.port), name=name, keep_logins=_KEEP_LOGINS
        )
        self.workers: list[_Worker] = []
        self.recording = Recording(workers=config.size)
        self.returned: float | None = None  # when the last restart finished

    def start_database(self) -> None:
        from outlast.demo._settings import CREATE_WRITES_INDEX, CREATE_WRITES_TABLE

        self.pg.start()
        self.pg.psql(f"CREATE ROLE {ROLE} LOGIN")
        self.pg.psql(f"CREATE DATABASE leads OWNER {ROLE}")
        self.pg.psql(
            f"SET ROLE {ROLE}; {CREATE_WRITES_TABLE}; {CREATE_WRITES_INDEX}", dbname="leads"
        )

    def start_workers(self) -> None:
        from outlast.demo._process import start_service

        budget = max(0.5, self.config.budget - 0.5)
        url = f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.proxy.port}/leads"
        mode = "outlast" if self.enabled else "plain"
        for i in range(self.config.size):
            log = self.workdir / f"{self.name}-{i // self.config.workers}-{i}.log"
            proc, base = start_service(log, url, mode=mode, budget=budget, cwd=self.workdir)
            self.workers.append(_Worker(i, proc, base, log))

    def stop_workers(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=10)

    def restart(self, clock: Callable[[], float]) -> None:
        self.pg.restart()
        self.returned = clock()

    def server_refusals(self, epoch0: float) -> list[float]:
        try:
            text = self.pg.log_path.read_bytes()
        except OSError:
            return []
        return [
            float(m.group(1)) - epoch0
            for m in _REFUSED.finditer(text)
            if m.group(2) == ROLE.encode()
        ]


class _FanOut:
    """The drill's injector over every side's proxy: the same fault at the same moment."""

    def __init__(self, fleets: list[_Fleet]) -> None:
        self.proxies = [f.proxy for f in fleets]

    def add_fault(
        self, kind: str, duration: float | None = None, toxicity: float = 1.0, **params: Any
    ) -> str:
        return "|".join(p.add_fault(kind, duration, toxicity, **params) for p in self.proxies)

    def remove_fault(self, fault_id: str) -> None:
        for proxy, fid in zip(self.proxies, fault_id.split("|"), strict=True):
            with contextlib.suppress(KeyError):
                proxy.remove_fault(fid)

    def clear(self) -> None:
        for proxy in self.proxies:
            proxy.clear()


# --------------------------------------------------------------- traffic and sampling


async def _wait_live(fleets: list[_Fleet], timeout: float) -> None:
    import httpx

    pending = [w for f in fleets for w in f.workers]
    end = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while pending:
            for w in list(pending):
                if w.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited ({w.proc.returncode}):\n{_tail(w.log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(w.url + "/health/live")).status_code < 500:
                        pending.remove(w)
            if time.monotonic() > end:
                raise RuntimeError(
                    f"{len(pending)} worker(s) did not start within {timeout:.0f} s:\n"
                    + _tail(pending[0].log)
                )
            if pending:
                await asyncio.sleep(0.3)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _traffic(
    worker: _Worker,
    rec: Recording,
    clock: Callable[[], float],
    stop: asyncio.Event,
    cfg: FleetConfig,
) -> None:
    """One request at a time to one worker, one every `interval` seconds."""
    import httpx

    async with httpx.AsyncClient(
        base_url=worker.url, timeout=cfg.budget + 1.0, trust_env=False
    ) as client:
        while not stop.is_set():
            start = clock()
            status: int | None = None
            try:
                status = (await client.get("/api/leads")).status_code
            except httpx.HTTPError:
                status = None
            rec.answers.append(Answer(worker.index, start, clock(), status))
            wait = cfg.interval - (clock() - start)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)


async def _sample(
    fleet: _Fleet, clock: Callable[[], float], stop: asyncio.Event, every: float = 0.25
) -> None:
    """The proxy's accepted connections and the server's sessions of the fleet, sampled."""
    import psycopg

    rec = fleet.recording
    conn: psycopg.AsyncConnection[Any] | None = None
    dsn = fleet.pg.dsn("postgres", connect_timeout=1)
    query = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
    try:
        while not stop.is_set():
            now = clock()
            stats = await asyncio.to_thread(fleet.proxy.stats)
            rec.connects.append((now, int(stats["total_connections"])))
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                cur = await conn.execute(query, (ROLE,))
                row = await cur.fetchone()
                rec.server.append((now, int(row[0]) if row else 0))
            except psycopg.Error:
                if conn is not None:
                    await conn.close()
                conn = None  # the server is restarting: no sample this time
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        if conn is not None:
            await conn.close()


# --------------------------------------------------------------- the run


@contextlib.contextmanager
def _fleets(config: FleetConfig, workdir: Path, progress: Progress) -> Iterator[list[_Fleet]]:
    with contextlib.ExitStack() as stack:
        fleets: list[_Fleet] = []
        for name in config.sides:
            fleet = _Fleet(name, config, workdir)
            stack.callback(fleet.pg.cleanup)
            fleets.append(fleet)
        progress(
            f"starting {len(fleets)} PostgreSQL server(s), max_connections={config.server_limit} "
            f"(the fleet's pools hold up to {config.size * POOL_PER_WORKER}) ..."
        )
        for fleet in fleets:
            fleet.start_database()
            fleet.proxy.start()
            stack.callback(fleet.proxy.stop)
        progress(
            f"starting {config.shape} workers per side ({len(fleets) * config.size} processes) ..."
        )
        for fleet in fleets:
            stack.callback(fleet.stop_workers)
            fleet.start_workers()
        yield fleets


@dataclass
class _Run:
    """The drill's timeline: fault windows (both sides), when each side's database
    returned, the run's length, and the epoch time of the clock's zero."""

    windows: list[tuple[str, float, float]]
    returned: dict[str, list[tuple[str, float, float, float]]]
    length: float
    epoch0: float


async def _drive(config: FleetConfig, fleets: list[_Fleet], progress: Progress) -> _Run:
    """Traffic, sampling and the scenarios, on one clock that starts when every worker is up."""
    await _wait_live(fleets, config.start_timeout)
    t0 = time.monotonic()
    epoch0 = time.time()

    def clock() -> float:
        return time.monotonic() - t0

    for fleet in fleets:
        fleet.proxy.clear_logins()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_traffic(w, f.recording, clock, stop, config))
        for f in fleets
        for w in f.workers
        for _ in range(config.clients)
    ]
    tasks += [asyncio.create_task(_sample(f, clock, stop)) for f in fleets]
    injector = _FanOut(fleets)

    def restart_all() -> None:
        import threading

        threads = [threading.Thread(target=f.restart, args=(clock,)) for f in fleets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    windows: list[tuple[str, float, float]] = []
    # Per fleet and scenario: the fault's start, when the database returned,
    # and the end of the observation that followed.
    returned: dict[str, list[tuple[str, float, float, float]]] = {f.name: [] for f in fleets}
    try:
        for name in config.scenarios:
            scenario = builtin(name, duration=config.duration, budget=config.budget)
            await asyncio.sleep(config.warmup)
            progress(f"{name}: {scenario.description}")
            played = await play(scenario, injector, clock, restart=restart_all)
            start = min(w.start for w in played)
            back = max(w.end for w in played)
            windows.append((name, start, back))
            await asyncio.sleep(config.observe)
            watched = clock()
            for fleet in fleets:
                own = fleet.returned if name == "restart" and fleet.returned else back
                returned[fleet.name].append((name, start, own, watched))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            injector.clear()
    return _Run(windows, returned, clock(), epoch0)


def run_fleet(config: FleetConfig, *, progress: Progress | None = None) -> FleetResult:
    """Run the fleet drill (blocking; starts and stops everything it needs)."""
    say = progress or (lambda _: None)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="outlast-fleet-"))
    try:
        with _fleets(config, workdir, say) as fleets:
            run = asyncio.run(_drive(config, fleets, say))
            sides = [_collect(f, config, run) for f in fleets]
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return FleetResult(config, sides, run.windows, time.monotonic() - started)


def _collect(fleet: _Fleet, config: FleetConfig, run: _Run) -> FleetSide:
    rec = fleet.recording
    # The proxy and the server stamp epoch seconds: onto the drill's clock.
    rec.logins = [(e["at"] - run.epoch0, e["rejected"]) for e in fleet.proxy.logins()]
    rec.server_rejections = fleet.server_refusals(run.epoch0)
    length = run.length
    returned = run.returned[fleet.name]
    seconds = per_second(rec, length)
    outages: list[Outage] = []
    for name, start, back, end in returned:
        outages.append(outage(name, rec, seconds, start=start, returned=back, end=end))
    label = "with outlast" if fleet.enabled else "without outlast"
    side = FleetSide(label, fleet.enabled, config.size, seconds, outages, [])
    side.checks = judge(side, config)
    return side
