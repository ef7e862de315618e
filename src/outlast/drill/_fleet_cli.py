"""``outlast demo --fleet``: its options, the side-by-side table, the plot file.

Importing this module needs only the standard library (``outlast --help``
stays fast and works without the demo's extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.table import Table

    from outlast.drill._fleet import FleetConfig, FleetResult
    from outlast.drill._fleet_figures import Outage

__all__ = [
    "add_fleet_arguments",
    "config_from_args",
    "fleet_checks",
    "fleet_table",
    "run_fleet_command",
]

DEFAULT_PLOT = "outlast-fleet.svg"


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "fleet (--fleet)",
        "run the reference service as containers x workers, one process each, against one "
        "server whose max_connections is below the fleet's total pool size; measure login "
        "attempts, server sessions, 53300 refusals, 503s and each worker's first 200",
    )
    g.add_argument("--fleet", action="store_true", help="run the fleet drill instead")
    g.add_argument("--containers", type=int, default=4, help="containers (default 4)")
    g.add_argument("--workers", type=int, default=2, help="workers per container (default 2)")
    g.add_argument(
        "--clients",
        type=int,
        default=1,
        help="concurrent clients per worker, each sending 10 requests a second (default 1)",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="the server's max_connections (default: 3 per worker + 3)",
    )
    g.add_argument("--plot", default=DEFAULT_PLOT, help=f"SVG plot path (default {DEFAULT_PLOT})")


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    from outlast.drill._fleet import FLEET_SCENARIOS, FleetConfig

    names = (
        tuple(n.strip() for n in str(args.scenarios).split(",") if n.strip())
        if args.scenarios
        else FLEET_SCENARIOS
    )
    if not 0 < args.duration <= 120 or not 0 < args.budget <= 60:
        raise ValueError("--duration must be in (0, 120] and --budget in (0, 60]")
    return FleetConfig(
        containers=args.containers,
        workers=args.workers,
        scenarios=names,
        duration=args.duration,
        budget=args.budget,
        max_connections=args.max_connections,
        clients=args.clients,
        sides=(args.only,) if args.only else ("outlast", "plain"),
    )


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def fleet_table(result: FleetResult) -> Table:
    """A row per scenario and fleet: the figures side by side."""
    from rich.table import Table

    from outlast.drill._fleet import POOL_PER_WORKER

    cfg = result.config
    table = Table(
        title=f"fleet drill: {cfg.shape} workers ({cfg.size}), max_connections "
        f"{cfg.server_limit}, pools up to {cfg.size * POOL_PER_WORKER}",
        title_justify="left",
    )
    columns: tuple[tuple[str, Callable[[Outage], str]], ...] = (
        ("peak/s", lambda o: str(o.peak_attempts)),
        ("logins", lambda o: str(o.attempts)),
        ("53300", lambda o: str(o.server_53300)),
        ("sess.", lambda o: _cell(o.peak_server_connections)),
        ("503", lambda o: str(o.unavailable)),
        ("5xx", lambda o: str(o.errors)),
        ("1st", lambda o: _cell(o.first_200)),
        ("last", lambda o: _cell(o.last_200) if o.silent == 0 else f"{o.silent} never"),
    )
    table.caption = (
        "peak/s: most login attempts in one second; logins: all of them; 53300: logins the "
        "server refused; sess.: most sessions on the server; 5xx: 500s and requests without "
        "an answer; 1st / last: seconds from the database's return to the first and to the "
        "last worker's first 200"
    )
    table.caption_justify = "left"
    table.add_column("outage / fleet", overflow="fold")
    for title, _ in columns:
        table.add_column(title, justify="right", no_wrap=True, min_width=max(len(title), 4))
    for name, _, _ in result.windows:
        table.add_row(f"[bold]{name}[/]", *("" for _ in columns))
        for i, side in enumerate(result.sides):
            o = next((x for x in side.outages if x.scenario == name), None)
            if o is None:
                continue
            style = "green" if side.enabled else "red"
            table.add_row(
                f"  [{style}]{'with outlast' if side.enabled else 'without'}[/]",
                *(fmt(o) for _, fmt in columns),
                end_section=i == len(result.sides) - 1,
            )
    return table


def fleet_checks(result: FleetResult) -> list[str]:
    """One line per check and fleet, as rich markup."""
    lines = []
    for side in result.sides:
        verdict = "[bold green]PASS[/]" if side.passed else "[bold red]FAIL[/]"
        lines.append(f"{side.label}: {verdict}")
        for c in side.checks:
            mark = "[green]✓[/]" if c.passed else "[red]✗[/]"
            lines.append(f"  {mark} {c.title}: {c.detail}")
    return lines


def run_fleet_command(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console

        from outlast.drill._fleet import run_fleet
        from outlast.drill._fleet_plot import fleet_svg
    except ModuleNotFoundError as exc:
        print(
            f"outlast demo: {exc.name} is missing; the demo needs its extra: "
            "pip install 'outlast[demo]'",
            file=sys.stderr,
        )
        return 2
    console = Console(stderr=True)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        console.print(f"outlast demo --fleet: {exc}", style="red", highlight=False, markup=False)
        return 2
    try:
        result = run_fleet(config, progress=lambda m: console.print(m, highlight=False))
    except (RuntimeError, OSError) as exc:  # a worker or a server that would not start
        console.print(f"outlast demo --fleet: {exc}", style="red", highlight=False, markup=False)
        return 2
    with open(args.plot, "w", encoding="utf-8") as fh:
        fh.write(fleet_svg(result))
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console()
        out.print(fleet_table(result))
        for line in fleet_checks(result):
            out.print(line, highlight=False)
        out.print(f"plot: {args.plot}   ({result.duration:.0f} s)")
    return 0 if result.passed else 1
