"""``outlast drill``: the command line, the live progress view and the scorecard."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from outlast.drill._checks import CHECK_TITLES
from outlast.drill._report import write_report
from outlast.drill._runner import DrillConfig, DrillResult, DrillRun
from outlast.drill._scenarios import BUILTIN_SCENARIOS, Injector, load_scenarios, resolve
from outlast.drill._traffic import Route

__all__ = [
    "DEFAULT_SCENARIOS",
    "AdminInjector",
    "add_arguments",
    "progress_view",
    "run_command",
    "run_with_progress",
    "scorecard_table",
]

DEFAULT_SCENARIOS = "down,blackhole,reset,freeze,terminate,neon_endpoint_disabled,flapping"


class AdminInjector:
    """The drill's fault injector over the chaos proxy's admin HTTP API."""

    def __init__(self, url: str, proxy: str | None = None) -> None:
        from outlast.chaos import AdminClient

        self.client = AdminClient(url)
        if proxy is None:
            names = sorted(self.client.proxies())
            if len(names) != 1:
                raise ValueError(
                    f"the admin API at {url} has {len(names)} proxies "
                    f"({', '.join(names) or 'none'}); pick one with --proxy NAME"
                )
            proxy = names[0]
        self.proxy = proxy

    def add_fault(
        self, kind: str, duration: float | None = None, toxicity: float = 1.0, **params: Any
    ) -> str:
        return self.client.add_fault(self.proxy, kind, duration, toxicity, **params)

    def remove_fault(self, fault_id: str) -> None:
        self.client.remove_fault(self.proxy, fault_id)

    def clear(self) -> None:
        self.client.clear(self.proxy)


def _route(text: str | None) -> Route | None:
    if text is None or text.strip().lower() in {"", "none", "off"}:
        return None
    return Route.parse(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--proxy-admin", help="chaos proxy admin API, e.g. http://127.0.0.1:8474")
    p.add_argument("--proxy", help="proxy name on the admin API (default: the only one)")
    p.add_argument("--read", default="GET /api/leads", help="a read route ('none' to skip)")
    p.add_argument("--write", default="POST /api/leads", help="a write route ('none' to skip)")
    p.add_argument("--ping", default=None, help="a route that needs no database")
    p.add_argument("--live", default="GET /health/live", help="liveness route ('none' to skip)")
    p.add_argument("--health", default="/health/ready", help="health JSON path ('none' to skip)")
    p.add_argument(
        "--readback",
        default=None,
        help="route that lists writes afterwards; {ids} is replaced by comma-separated ids "
        "(default: the read route with ?ids={ids})",
    )
    p.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma-separated; built-in: {', '.join(BUILTIN_SCENARIOS)}",
    )
    p.add_argument("--scenario-file", help="TOML file with [scenarios.<name>] tables")
    p.add_argument("--budget", type=float, default=5.0, help="seconds a request may take")
    p.add_argument("--duration", type=float, default=8.0, help="seconds each fault lasts")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of baseline per scenario")
    p.add_argument("--max-recovery", type=float, default=10.0, help="seconds to recover")
    p.add_argument("--restart-command", help="shell command that restarts the database")
    p.add_argument("--label", default=None, help="name of the service in the report")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--report", default=None, help="write an HTML report to this file")


def config_from_args(args: argparse.Namespace) -> DrillConfig:
    custom = load_scenarios(args.scenario_file) if args.scenario_file else {}
    names = [n.strip() for n in str(args.scenarios).split(",") if n.strip()]
    if not names:
        raise ValueError("--scenarios names no scenario")
    for n in names:
        if n not in custom and n not in BUILTIN_SCENARIOS:
            raise ValueError(
                f"unknown scenario {n!r}; built-in: {', '.join(BUILTIN_SCENARIOS)}"
                + (f"; from {args.scenario_file}: {', '.join(custom)}" if custom else "")
            )
    if not 0 < args.budget <= 120 or not 0 < args.duration <= 600:
        raise ValueError("--budget must be in (0, 120] and --duration in (0, 600]")
    health = None if str(args.health).lower() in {"none", "off", ""} else args.health
    return DrillConfig(
        url=args.url,
        scenarios=resolve(names, duration=args.duration, budget=args.budget, custom=custom),
        read=_route(args.read),
        write=_route(args.write),
        ping=_route(args.ping),
        live=_route(args.live),
        health_path=health,
        readback=_route(args.readback),
        budget=args.budget,
        warmup=args.warmup,
        max_recovery=args.max_recovery,
        label=args.label or args.url,
    )


def _mark(passed: bool | None) -> Text:
    if passed is None:
        return Text("-", style="dim")
    return Text("✓", style="bold green") if passed else Text("✗", style="bold red")


# Below this width the failed checks' details wrap into unreadable columns;
# the HTML report and --json always carry them.
DETAILS_MIN_WIDTH = 140


def scorecard_table(result: DrillResult, *, details: bool = True) -> Table:
    """The scorecard: a row per scenario, a column per check (details under failures)."""
    verdict = "[bold green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
    table = Table(title=f"{result.label}  {verdict}", title_justify="left", show_lines=details)
    table.add_column("scenario", style="bold")
    short = {
        "no_500": "no 500",
        "retry_after": "Retry-After",
        "budget": "budget",
        "ping": "no-db",
        "live": "live",
        "background": "loop",
        "recovery": "recovery",
        "writes": "writes",
        "settled": "settled",
    }
    for name in CHECK_TITLES:
        table.add_column(short[name], justify="center")
    for s in result.scenarios:
        cells: list[Text | str] = []
        for name in CHECK_TITLES:
            c = s.check(name)
            mark = _mark(None if c is None else c.passed)
            if name == "recovery" and s.recovery is not None:
                mark.append(f" {s.recovery:.1f}s")
            if details and c is not None and c.passed is False and c.detail:
                mark.append("\n" + c.detail[:40], style="dim")
            cells.append(mark)
        label = s.name if s.error is None else f"{s.name}\n[red]{s.error[:60]}[/]"
        table.add_row(label, *cells)
    if result.error:
        table.caption = f"[red]{result.error}[/]"
    elif result.ledger is not None:
        lg = result.ledger
        table.caption = (
            f"writes: {lg.acknowledged} acknowledged, {lg.failed} failed, {lg.unknown} unknown "
            f"({lg.unknown_told} reported so by the service, {lg.unknown_present} present); "
            f"lost {len(lg.lost)}, doubled {len(lg.duplicated)}"
        )
    return table


def progress_view(runs: Sequence[DrillRun]) -> Group:
    rows: list[Table] = []
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for col in ("service", "scenario", "phase", "t", "req", "2xx", "503", "5xx", "timeout", "conn"):
        table.add_column(col)
    for run in runs:
        recs = run.records
        now = run.clock()
        recent = Counter(r.outcome for r in recs if r.start >= now - 3.0)
        table.add_row(
            run.config.label,
            run.scenario,
            run.phase,
            f"{now:.0f}s",
            str(len(recs)),
            f"[green]{recent.get('ok', 0)}[/]",
            f"[yellow]{recent.get('503', 0)}[/]",
            f"[red]{recent.get('5xx', 0)}[/]",
            f"[magenta]{recent.get('timeout', 0)}[/]",
            str(recent.get("refused", 0) + recent.get("reset", 0) + recent.get("error", 0)),
        )
    rows.append(table)
    return Group(Text("outage drill (last 3 s of traffic)", style="bold"), *rows)


async def run_with_progress(runs: Sequence[DrillRun], console: Console) -> list[DrillResult]:
    tasks = [asyncio.create_task(r.run()) for r in runs]
    if not console.is_terminal:
        return list(await asyncio.gather(*tasks))
    with Live(progress_view(runs), console=console, refresh_per_second=4, transient=True) as live:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=0.25)
            live.update(progress_view(runs))
    return [t.result() for t in tasks]


def _restart_callback(command: str | None) -> Any:
    if not command:
        return None
    argv = shlex.split(command)

    def restart() -> None:
        subprocess.run(argv, check=True, timeout=300)

    return restart


def run_command(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        config = config_from_args(args)
        injector: Injector | None = (
            AdminInjector(args.proxy_admin, args.proxy) if args.proxy_admin else None
        )
    except (ValueError, OSError) as exc:
        console.print(f"[red]outlast drill: {exc}[/]")
        return 2
    except Exception as exc:  # the admin API answered with an error
        console.print(f"[red]outlast drill: {exc}[/]")
        return 2
    run = DrillRun(config, injector, restart=_restart_callback(args.restart_command))
    [result] = asyncio.run(run_with_progress([run], console))
    if args.report:
        write_report(args.report, [result])
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console()
        out.print(scorecard_table(result, details=out.width >= DETAILS_MIN_WIDTH))
        if args.report:
            out.print(f"report: {args.report}")
    return 0 if result.passed else 1
