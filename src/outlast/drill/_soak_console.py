"""The soak's terminal views: live progress and the verdict table (rich)."""

from __future__ import annotations

import asyncio
from collections import Counter

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from outlast.drill._flat import fmt
from outlast.drill._soak import SoakResult, SoakRun

__all__ = ["progress_view", "run_with_progress", "soak_table"]

LABELS = {
    "rss": "memory (RSS)",
    "fds": "open file descriptors",
    "threads": "threads",
    "tasks": "asyncio tasks",
    "pool": "pool connections",
    "server": "server connections",
    "latency": "no-database route latency (median)",
}


def soak_table(result: SoakResult) -> Table:
    verdict = "[bold green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
    w = result.windows
    table = Table(
        title=f"{result.label}  soak {result.length:g} s  {verdict}",
        title_justify="left",
    )
    table.add_column("resource", style="bold")
    table.add_column(f"first window ({w.first[0]:g}-{w.first[1]:g} s)", justify="right")
    table.add_column(f"last window ({w.last[0]:g}-{w.last[1]:g} s)", justify="right")
    table.add_column("flat", justify="center")
    table.add_column("detail")
    for r in [*result.resources, result.latency]:
        if r.passed is None:
            mark = Text("-", style="dim")
        else:
            mark = Text("✓", style="bold green") if r.passed else Text("✗", style="bold red")
        table.add_row(
            LABELS.get(r.name, r.name),
            "-" if r.first is None else fmt(r.first, r.unit),
            "-" if r.last is None else fmt(r.last, r.unit),
            mark,
            r.detail,
        )
    by_name = Counter(c.name for c in result.cycles)
    failed = Counter(c.name for c in result.failed_cycles)
    faults = ", ".join(
        f"{name} x{n}" + (f" ({failed[name]} failed)" if failed[name] else "")
        for name, n in by_name.items()
    )
    lg = result.drill.ledger
    caption = [f"{len(result.cycles)} faults: {faults or 'none'}"]
    if lg is not None:
        caption.append(
            f"writes: {lg.acknowledged} acknowledged, {lg.failed} failed, {lg.unknown} unknown;"
            f" lost {len(lg.lost)}, doubled {len(lg.duplicated)}"
        )
    caption.append(f"read from: {', '.join(result.sources) or 'nothing'}")
    reasons = result.reasons()
    if reasons:
        caption.append("[red]" + "; ".join(reasons) + "[/]")
    table.caption = "\n".join(caption)
    return table


def progress_view(run: SoakRun) -> Group:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for col in ("service", "t", "fault", "phase", "req", "RSS", "fds", "threads", "server"):
        table.add_column(col)
    last = run.sampler.samples[-1] if run.sampler and run.sampler.samples else None

    def show(name: str, unit: str) -> str:
        value = None if last is None else last.get(name)
        return "-" if value is None else fmt(value, unit)

    table.add_row(
        run.drill.config.label,
        f"{run.elapsed:.0f}/{run.config.length:g}s",
        run.drill.scenario,
        run.drill.phase,
        str(len(run.drill.records)),
        show("rss", "bytes"),
        show("fds", ""),
        show("threads", ""),
        show("server", ""),
    )
    return Group(Text("outlast soak", style="bold"), table)


async def run_with_progress(run: SoakRun, console: Console) -> SoakResult:
    task = asyncio.create_task(run.run())
    if not console.is_terminal:
        return await task
    with Live(progress_view(run), console=console, refresh_per_second=2, transient=True) as live:
        while not task.done():
            await asyncio.wait([task], timeout=0.5)
            live.update(progress_view(run))
    return task.result()
