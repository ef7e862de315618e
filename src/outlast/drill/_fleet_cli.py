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
    from rich.table import Table

    from outlast.drill._fleet import FleetConfig, FleetResult

__all__ = ["add_fleet_arguments", "config_from_args", "fleet_table", "run_fleet_command"]

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
        sides=(args.only,) if args.only else ("outlast", "plain"),
    )


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def fleet_table(result: FleetResult) -> Table:
    """One row per scenario and figure, one column per fleet."""
    from rich.table import Table
    from rich.text import Text

    cfg = result.config
    table = Table(
        title=f"fleet drill: {cfg.shape} workers ({cfg.size}), max_connections "
        f"{cfg.server_limit}, pools up to {cfg.size * 20}",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("scenario", style="bold")
    table.add_column("figure")
    for side in result.sides:
        table.add_column(side.label)
    figures = (
        ("peak login attempts/s", lambda o: _cell(o.peak_attempts)),
        ("login attempts", lambda o: _cell(o.attempts)),
        ("53300 from the server", lambda o: _cell(o.server_53300)),
        ("peak server sessions", lambda o: _cell(o.peak_server_connections)),
        ("503 / other errors", lambda o: f"{o.unavailable} / {o.errors}"),
        (
            "first / last worker's first 200",
            lambda o: (
                f"{_cell(o.first_200, ' s')} / "
                + (_cell(o.last_200, " s") if o.silent == 0 else f"{o.silent} never")
            ),
        ),
    )
    names = [n for n, _, _ in result.windows]
    for name in names:
        for i, (label, fmt) in enumerate(figures):
            cells = []
            for side in result.sides:
                o = next((x for x in side.outages if x.scenario == name), None)
                cells.append("-" if o is None else fmt(o))
            table.add_row(name if i == 0 else "", label, *cells)
    verdicts: list[Text] = []
    for side in result.sides:
        text = Text()
        for c in side.checks:
            style = "green" if c.passed else "red"
            text.append(("✓ " if c.passed else "✗ ") + c.title + f" ({c.detail})\n", style=style)
        verdicts.append(text)
    table.add_row("checks", "", *verdicts)
    return table


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
        console.print(f"[red]outlast demo --fleet: {exc}[/]", highlight=False)
        return 2
    result = run_fleet(config, progress=lambda m: console.print(m, highlight=False))
    with open(args.plot, "w", encoding="utf-8") as fh:
        fh.write(fleet_svg(result))
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console()
        out.print(fleet_table(result))
        out.print(f"plot: {args.plot}   ({result.duration:.0f} s)")
    return 0 if result.passed else 1
