"""The drill's terminal views: the live progress table and the scorecard (rich)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from outlast.drill._checks import CHECK_TITLES
from outlast.drill._runner import DrillResult, DrillRun

__all__ = ["DETAILS_MIN_WIDTH", "progress_view", "run_with_progress", "scorecard_table"]


def _mark(passed: bool | None) -> Text:
    if passed is None:
        return Text("-", style="dim")
    return Text("✓", style="bold green") if passed else Text("✗", style="bold red")


# Below this width the failed checks' details wrap into unreadable columns;
# the HTML report and --json always carry them.
DETAILS_MIN_WIDTH = 140


def scorecard_table(result: DrillResult, *, details: bool = True) -> Table:
    """The scorecard: a row per scenario, a column per check (details under failures)."""
    if result.passed:
        verdict = "[bold green]PASS[/]"
    elif result.not_exercised_only:
        verdict = "[bold yellow]NOT A PASS: some scenarios were not exercised[/]"
    else:
        verdict = "[bold red]FAIL[/]"
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
                mark.append("\n" + c.detail[:60], style="dim")
            cells.append(mark)
        if s.error is not None:
            label = f"{s.name}\n[red]{s.error[:60]}[/]"
        elif s.exercised is False:
            label = f"{s.name}\n[yellow]NOT EXERCISED[/]: its fault never fired"
        else:
            label = s.name
        table.add_row(label, *cells)
    if result.error:
        table.caption = f"[red]{result.error}[/]"
    elif result.ledger is not None:
        lg = result.ledger
        table.caption = (
            f"writes: {lg.acknowledged} acknowledged, {lg.failed} failed, {lg.unknown} unknown "
            f"({lg.unknown_told} reported so by the service, {lg.unknown_present} present); "
            f"lost {len(lg.lost)}, doubled {len(lg.duplicated)}, "
            f"failed but stored {len(lg.failed_present)}"
            + (f", {lg.unchecked} could not be looked up" if lg.unchecked else "")
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
