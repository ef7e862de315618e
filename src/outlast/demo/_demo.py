"""``outlast demo``: embedded Postgres, a chaos proxy per service, the reference
service built three ways (with outlast, fixed by hand the usual way, without
either), and the drill on all of them at once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from outlast.demo._process import start_service
from outlast.drill._fleet_cli import add_fleet_arguments

__all__ = ["DEMO_SCENARIOS", "SERVICES", "add_arguments", "run_demo"]

DEMO_SCENARIOS = (
    "down,blackhole,freeze,terminate,neon_endpoint_disabled,flapping,commit_lost,restart"
)

#: (``--only`` name and ``OUTLAST_MODE``, label in the scorecards), in column order.
SERVICES = (
    ("outlast", "with outlast"),
    ("seeds", "fixed by hand"),
    ("plain", "without outlast"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated scenarios (default {DEMO_SCENARIOS}; with --fleet: "
        "down,restart,neon_endpoint_disabled,too_many_connections)",
    )
    p.add_argument("--budget", type=float, default=3.0, help="seconds a request may take")
    p.add_argument("--duration", type=float, default=6.0, help="seconds each fault lasts")
    p.add_argument("--report", default="outlast-report.html", help="HTML report path")
    p.add_argument("--json", action="store_true", help="print both results as JSON")
    p.add_argument(
        "--only",
        choices=[name for name, _ in SERVICES],
        help="drill one service only (seeds: fixed by hand with retry decorators, "
        "a 503 handler and pool_pre_ping, the usual fix)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_fleet_arguments(p)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited ({proc.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service did not start within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _start_service(
    name: str, db_url: str, *, mode: str, budget: float, workdir: Path
) -> tuple[subprocess.Popen[bytes], str, Path]:
    log = workdir / f"{name}.log"
    proc, url = start_service(log, db_url, mode=mode, budget=budget, cwd=workdir)
    return proc, url, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _comparison(results: list[object]) -> Table:
    from outlast.drill import DrillResult

    rs = [r for r in results if isinstance(r, DrillResult)]
    table = Table(
        title="outage drill: the same service with outlast, fixed by hand, and without",
        show_lines=True,
    )
    table.add_column("scenario", style="bold")
    for r in rs:
        table.add_column(r.label)
    names: list[str] = []
    for r in rs:
        names += [s.name for s in r.scenarios if s.name not in names]
    for n in names:
        cells: list[Text] = []
        for r in rs:
            s = next((x for x in r.scenarios if x.name == n), None)
            if s is None:
                cells.append(Text("-"))
            elif s.exercised is False:
                cells.append(Text("- not exercised (its fault never fired)", style="yellow"))
            elif s.passed:
                cells.append(Text("✓ pass: " + s.in_words, style="green"))
            else:
                cells.append(Text("✗ " + s.in_words, style="red"))
        table.add_row(n, *cells)
    return table


def run_demo(args: argparse.Namespace) -> int:
    if args.fleet:
        from outlast.drill._fleet_cli import run_fleet_command

        return run_fleet_command(args)
    from outlast.chaos import AdminServer, Proxy
    from outlast.drill import DrillConfig, DrillRun, Route, resolve, write_report
    from outlast.drill._cli import AdminInjector
    from outlast.drill._console import DETAILS_MIN_WIDTH, run_with_progress, scorecard_table
    from outlast.testing import EmbeddedPostgres

    console = Console(stderr=True)
    out = Console()
    started = time.monotonic()
    names = [n.strip() for n in str(args.scenarios or DEMO_SCENARIOS).split(",") if n.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="outlast-demo-"))
    with contextlib.ExitStack() as stack:
        services = list(SERVICES)
        if args.only:
            services = [s for s in services if s[0] == args.only]
        console.print(
            f"[bold]outlast demo[/]: starting {len(services)} embedded PostgreSQL server(s) ..."
        )
        proxies = []
        restarts = []
        for name, _ in services:
            # One server per service: the `restart` scenario restarts a real
            # server, and each drill must restart only its own service's.
            pg = EmbeddedPostgres(workdir / f"pg-{name}")
            stack.callback(pg.cleanup)
            stack.callback(pg.stop)
            pg.start()
            pg.create_database("leads")
            restarts.append(pg.restart)
            proxy = Proxy(listen=("127.0.0.1", 0), upstream=("127.0.0.1", pg.port), name=name)
            proxy.start()
            stack.callback(proxy.stop)
            proxies.append(proxy)
        admin = AdminServer(proxies, listen=("127.0.0.1", 0)).start()
        stack.callback(admin.stop)
        console.print(f"starting the service {', '.join(label for _, label in services)} ...")
        runs = []
        for (name, label), proxy, restart in zip(services, proxies, restarts, strict=True):
            db_url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/leads"
            # The service answers within its own budget, a little under the
            # client's (the drill's), so that a 503 at the deadline still
            # reaches the client in time.
            service_budget = max(0.5, args.budget - 0.5)
            proc, url, log = _start_service(
                name, db_url, mode=name, budget=service_budget, workdir=workdir
            )
            stack.callback(_stop, proc)
            _wait_http(url + "/health/live", proc, 60.0, log)
            config = DrillConfig(
                url=url,
                scenarios=resolve(names, duration=args.duration, budget=args.budget),
                ping=Route("GET", "/api/ping"),
                budget=args.budget,
                warmup=1.5,
                settle=1.0,
                max_recovery=5.0,
                readback_timeout=10.0,
                label=label,
            )
            injector = AdminInjector(admin.url, name, token=admin.token)
            runs.append(DrillRun(config, injector, restart=restart))
        console.print(
            f"drilling {len(runs)} service(s) through {len(names)} scenarios "
            f"({args.duration:g} s faults, {args.budget:g} s budget) ..."
        )
        results = asyncio.run(run_with_progress(runs, console))
    elapsed = time.monotonic() - started
    write_report(args.report, results, title="outlast demo: outage drill")
    if args.json:
        import json

        json.dump([r.as_dict() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out.print(_comparison(list(results)))
        for r in results:
            out.print(scorecard_table(r, details=out.width >= DETAILS_MIN_WIDTH))
        out.print(f"report: {args.report}   ({elapsed:.0f} s)")
    if args.keep:
        console.print(f"kept {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    with_outlast = [r for r in results if r.label == "with outlast"]
    return 0 if all(r.passed for r in with_outlast) else 1
