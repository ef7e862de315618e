"""The soak's HTML report and figure: resource plots, the verdict, the fault cycles.

Self-contained like the drill's report (`_report`): inline SVG, no script, no
network. `soak_svg` is the same figure as a standalone file for a README.
"""

from __future__ import annotations

import html
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from outlast.drill._flat import RESOURCES, Flatness, fmt
from outlast.drill._plot import Panel, figure
from outlast.drill._report import _CSS, _chart, _legend
from outlast.drill._sample import series
from outlast.drill._soak import SoakResult
from outlast.drill._soak_console import LABELS

__all__ = ["panels", "render_soak_html", "soak_svg", "write_soak_report"]


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _latency_points(result: SoakResult) -> list[tuple[float, float | None]]:
    """The no-database route's median latency per second, in ms."""
    by_second: dict[int, list[float]] = {}
    for r in result.drill.records:
        if r.kind == "ping" and r.outcome == "ok":
            t = r.start - result.started
            if 0 <= t < result.length:
                by_second.setdefault(int(t), []).append(r.latency * 1000)
    return [(s + 0.5, statistics.median(v)) for s, v in sorted(by_second.items())]


def panels(result: SoakResult) -> list[Panel]:
    out = []
    verdicts = {r.name: r for r in result.resources}
    processes = max((s.processes or 0 for s in result.samples), default=0)
    for name, unit in RESOURCES.items():
        v = verdicts[name]
        title = LABELS[name]
        if name in {"rss", "fds", "threads"} and processes > 1:
            title += f", {processes} processes"
        out.append(
            Panel(
                name,
                title,
                series(result.samples, name),
                scale=1024 * 1024 if unit == "bytes" else 1.0,
                unit="MiB" if unit == "bytes" else unit,
                passed=v.passed,
                note=v.detail,
            )
        )
    lat = result.latency
    out.append(
        Panel(
            "latency",
            "no-database route latency",
            _latency_points(result),
            unit="ms (median per second)",
            passed=lat.passed,
            note=lat.detail,
        )
    )
    return out


def soak_svg(result: SoakResult, *, title: str | None = None) -> str:
    verdict = "pass" if result.passed else "FAIL"
    w = result.windows
    return figure(
        panels(result),
        end=result.length,
        shade=[w.first, w.last],
        title=title
        or f"{result.label}: {result.length / 60:g}-minute soak, {len(result.cycles)} faults,"
        f" {verdict}",
    )


def _row(r: Flatness) -> str:
    if r.passed is None:
        cell = '<td class="na">-</td>'
    else:
        cell = '<td class="ok">✓ flat</td>' if r.passed else '<td class="bad">✗ grows</td>'
    first = "-" if r.first is None else fmt(r.first, r.unit)
    last = "-" if r.last is None else fmt(r.last, r.unit)
    return (
        f"<tr><td><b>{_e(LABELS.get(r.name, r.name))}</b></td><td>{_e(first)}</td>"
        f"<td>{_e(last)}</td>{cell}<td>{_e(r.detail)}</td></tr>"
    )


def _faults(result: SoakResult) -> str:
    names = list(dict.fromkeys(c.name for c in result.cycles))
    rows = []
    for name in names:
        cycles = [c for c in result.cycles if c.name == name]
        failed = [c for c in cycles if c in result.failed_cycles]
        rec = [c.recovery for c in cycles if c.recovery is not None]
        checks = Counter(ch.title for c in failed for ch in c.checks if ch.passed is False)
        checks.update(f"error: {c.error}" for c in failed if c.error)
        why = ", ".join(f"{t} ({n}x)" for t, n in checks.items())
        cls = "bad" if failed else "ok"
        rows.append(
            f"<tr><td><b>{_e(name)}</b></td><td>{len(cycles)}</td>"
            f'<td class="{cls}">{len(cycles) - len(failed)} passed{_e("; " + why if why else "")}'
            f"</td><td>{(max(rec) if rec else 0):.2f} s</td></tr>"
        )
    return (
        '<table class="soak-faults"><thead><tr><th>fault</th><th>times</th><th>drill checks</th>'
        f"<th>slowest recovery</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_soak_html(results: Sequence[SoakResult], *, title: str = "outlast soak") -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1>{_e(title)}</h1><div class="meta">{now}</div>',
    ]
    for r in results:
        badge = (
            '<span class="badge pass">PASS</span>'
            if r.passed
            else '<span class="badge fail">FAIL</span>'
        )
        w = r.windows
        lg = r.drill.ledger
        meta = (
            f"{_e(r.url)} · {r.length:g} s · {len(r.cycles)} faults · "
            f"{len(r.drill.records)} requests · read from {_e(', '.join(r.sources) or 'nothing')}"
        )
        if lg is not None:
            meta += (
                f" · writes: {lg.acknowledged} acknowledged, {lg.failed} failed, "
                f"{lg.unknown} unknown, {len(lg.lost)} lost, {len(lg.duplicated)} doubled"
            )
        parts.append(f'<section class="soak"><h2>{_e(r.label)} soak {badge}</h2>')
        parts.append(f'<div class="meta">{meta}</div>')
        reasons = r.reasons()
        if reasons:
            parts.append(f'<div class="meta"><b>Why:</b> {_e("; ".join(reasons))}</div>')
        parts.append(
            '<table class="soak-verdict"><thead><tr><th>resource</th>'
            f"<th>first window ({w.first[0]:g}-{w.first[1]:g} s)</th>"
            f"<th>last window ({w.last[0]:g}-{w.last[1]:g} s)</th><th>verdict</th>"
            "<th>detail (medians)</th></tr></thead><tbody>"
            + "".join(_row(x) for x in [*r.resources, r.latency])
            + "</tbody></table>"
        )
        parts.append(soak_svg(r))
        parts.append("<h3>Faults</h3>")
        parts.append(_faults(r))
        parts.append("<h3>Traffic</h3>")
        parts.append(_chart(r.drill, width=1300, height=240))
        parts.append(_legend())
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_soak_report(path: str, results: Sequence[SoakResult], **kw: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_soak_html(results, **kw))
