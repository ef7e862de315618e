"""``outlast drill --soak``: its options and the command (standard library at import)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outlast.drill._runner import DrillConfig

__all__ = ["SOAK_DURATION", "add_soak_arguments", "run_soak_command"]

#: Seconds each fault lasts in a soak unless --duration says otherwise.
SOAK_DURATION = 2.0
#: Seconds of steady load before each fault in a soak (the drill's --warmup).
SOAK_GAP = 1.5


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "soak: minutes of faults while the service's resources are watched",
        "With --soak the drill cycles through the scenarios (default: every built-in one but "
        "restart; each fault lasts --duration, 2 s) until the time is up, samples the "
        "service every second, and passes only if memory, file descriptors, threads, asyncio "
        "tasks, pool and server connections stay flat and the no-database route does not slow "
        "down.",
    )
    g.add_argument("--soak", metavar="DURATION", help="soak for this long: 90s, 10m, 1h")
    g.add_argument(
        "--pid",
        type=int,
        help="the service's process id: memory, fds and threads of it and its children "
        "(gunicorn workers) are read from /proc",
    )
    g.add_argument(
        "--metrics",
        default="/metrics",
        help="the service's Prometheus path (outlast.prometheus): pool connections, asyncio "
        "tasks, Python threads ('none' to skip; a 404 skips it too)",
    )
    g.add_argument(
        "--dsn",
        default=None,
        help="a direct connection to the service's database, to count its connections in "
        "pg_stat_activity (default: $OUTLAST_SOAK_DSN; never printed)",
    )
    g.add_argument("--soak-json", metavar="FILE", help="write every sample and verdict as JSON")
    g.add_argument("--soak-svg", metavar="FILE", help="write the resource plots as an SVG file")


def run_soak_command(
    args: argparse.Namespace,
    *,
    config_from_args: Callable[[argparse.Namespace], DrillConfig],
    injector_from_args: Callable[[argparse.Namespace], Any],
    restart: Callable[[], None] | None,
) -> int:
    """The soak (``outlast drill`` hands over its own option parsing and injector)."""
    try:
        import asyncio

        from rich.console import Console

        from outlast.drill._soak import SOAK_SCENARIOS, SoakConfig, SoakRun, parse_length
        from outlast.drill._soak_console import run_with_progress, soak_table
        from outlast.drill._soak_report import soak_svg, write_soak_report
    except ModuleNotFoundError as exc:
        print(
            f"outlast drill: {exc.name} is missing; the drill needs its extra: "
            "pip install 'outlast[drill]'",
            file=sys.stderr,
        )
        return 2
    console = Console(stderr=True)
    try:
        length = parse_length(args.soak)
        if args.scenarios is None:
            args.scenarios = SOAK_SCENARIOS
        if args.duration is None:
            args.duration = SOAK_DURATION
        if args.warmup is None:
            args.warmup = SOAK_GAP
        drill = config_from_args(args)
        drill.settle = 0.5
        # Minutes of writes: give the read-back time for all of them.
        drill.readback_timeout = max(drill.readback_timeout, length / 5)
        metrics = None if str(args.metrics).lower() in {"", "none", "off"} else args.metrics
        if args.pid is not None and not os.path.isdir(f"/proc/{args.pid}"):
            raise ValueError(f"--pid {args.pid}: no such process (or no /proc here)")
        config = SoakConfig(
            drill=drill,
            length=length,
            pid=args.pid,
            metrics_path=metrics,
            dsn=args.dsn or os.environ.get("OUTLAST_SOAK_DSN") or None,
        )
        injector = injector_from_args(args)
        if injector is None:
            raise ValueError("a soak injects faults: give --proxy-admin")
    except ModuleNotFoundError as exc:  # pragma: no cover - an extra missing
        console.print(
            f"[red]outlast drill: {exc.name} is missing (pip install 'outlast[drill]')[/]"
        )
        return 2
    except Exception as exc:  # bad options, or the admin API answered with an error
        console.print(f"[red]outlast drill: {exc}[/]", highlight=False)
        return 2
    run = SoakRun(config, injector, restart=restart)
    result = asyncio.run(run_with_progress(run, console))
    if args.report:
        write_soak_report(args.report, [result])
    if args.soak_svg:
        with open(args.soak_svg, "w", encoding="utf-8") as fh:
            fh.write(soak_svg(result))
    if args.soak_json:
        with open(args.soak_json, "w", encoding="utf-8") as fh:
            json.dump(result.as_dict(), fh)
    if args.json:
        summary = result.as_dict()
        summary.pop("samples")
        summary["drill"] = {k: v for k, v in summary["drill"].items() if k != "scenarios"}
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console()
        out.print(soak_table(result))
        if args.report:
            out.print(f"report: {args.report}")
    return 0 if result.passed else 1
