"""A self-contained HTML report: timeline charts (inline SVG) and scorecards.

No script, no stylesheet or font from the network: the file opens offline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from outlast.drill._checks import CHECK_TITLES, ScenarioResult
from outlast.drill._metrics import COLUMNS as METRIC_COLUMNS
from outlast.drill._runner import DrillResult

__all__ = ["render_html", "write_report"]

# outcome group -> (label, colour); stacked bottom to top in this order
_GROUPS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("ok", "2xx", "#2f9e5b", ("ok",)),
    ("503", "503", "#e0a526", ("503",)),
    ("5xx", "500 & other 5xx", "#d64545", ("5xx",)),
    ("timeout", "timeout (past budget)", "#7b4fd6", ("timeout",)),
    ("conn", "refused / reset", "#6b7280", ("refused", "reset", "error")),
    ("4xx", "4xx", "#3b82f6", ("4xx",)),
]
_CHECK_ORDER = list(CHECK_TITLES)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2933;
background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px}
h3{font-size:14px;margin:16px 0 2px}
.meta{color:#52606d;margin-bottom:14px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
color:#fff;vertical-align:middle;margin-left:6px}
.pass{background:#2f9e5b}.fail{background:#d64545}.skip{background:#b7791f}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px}
th,td{border:1px solid #d9e2ec;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f4f8;font-weight:600}
td.ok{background:#e3f6ea}td.bad{background:#fde8e8}td.na{color:#9aa5b1}
.detail{display:block;color:#52606d;font-size:11px}
svg text{font:11px system-ui,sans-serif;fill:#334e68}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _chart(result: DrillResult, *, width: int = 1300, height: int = 270) -> str:
    left, right, top, bottom = 48, 12, 26, 30
    pw, ph = width - left - right, height - top - bottom
    end = max([result.duration, *(r.start + r.latency for r in result.records), 1.0])
    nbins = max(1, math.ceil(end))
    counts: list[dict[str, int]] = [dict.fromkeys((g[0] for g in _GROUPS), 0) for _ in range(nbins)]
    group_of = {o: g[0] for g in _GROUPS for o in g[3]}
    for r in result.records:
        b = min(nbins - 1, max(0, int(r.start)))
        counts[b][group_of.get(r.outcome, "conn")] += 1
    peak = max([sum(c.values()) for c in counts] + [1])
    step = 10 ** math.floor(math.log10(peak)) if peak >= 10 else 1
    ymax = math.ceil(peak / step) * step

    def x(t: float) -> float:
        return left + pw * t / nbins

    def y(v: float) -> float:
        return top + ph - ph * v / ymax

    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="requests per second by outcome, {_e(result.label)}">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#d9e2ec"/>',
    ]
    for s in result.scenarios:
        for w in s.windows:
            x0, x1 = x(w.start), x(max(w.end, w.start + 0.15))
            out.append(
                f'<rect class="fault-window" data-scenario="{_e(s.name)}" x="{x0:.1f}" '
                f'y="{top}" width="{x1 - x0:.1f}" height="{ph}" fill="#d64545" '
                f'fill-opacity="0.13"><title>{_e(s.name)}: {_e(w.fault)} '
                f"{w.start:.1f}-{w.end:.1f} s</title></rect>"
            )
        # A soak has a hundred faults or more: their names would overprint.
        label = f'<text x="{x(s.start) + 3:.1f}" y="{top - 8}">{_e(s.name)}</text>'
        out.append(
            f'<line class="scenario-start" x1="{x(s.start):.1f}" x2="{x(s.start):.1f}" '
            f'y1="{top}" y2="{top + ph}" stroke="#9aa5b1" stroke-dasharray="3,3"/>'
            + (label if len(result.scenarios) <= 24 else "")
        )
    for i in range(0, int(ymax) + 1, max(1, int(ymax // 4))):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(i):.1f}" y2="{y(i):.1f}" '
            f'stroke="#eef2f6"/><text x="{left - 6}" y="{y(i) + 4:.1f}" '
            f'text-anchor="end">{i}</text>'
        )
    tick = 5 if nbins <= 40 else 10 if nbins <= 150 else 60 if nbins <= 900 else 300
    for t in range(0, nbins + 1, tick):
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t}s</text>')
    bw = max(1.0, pw / nbins - 1.0)
    for key, label, colour, _ in _GROUPS:
        parts = []
        for i, c in enumerate(counts):
            if not c[key]:
                continue
            below = sum(c[g[0]] for g in _GROUPS[: [g[0] for g in _GROUPS].index(key)])
            y1, y0 = y(below + c[key]), y(below)
            parts.append(
                f'<rect x="{x(i) + 0.5:.1f}" y="{y1:.1f}" width="{bw:.1f}" '
                f'height="{max(0.5, y0 - y1):.1f}"/>'
            )
        out.append(
            f'<g class="series series-{key}" fill="{colour}" data-label="{_e(label)}">'
            + "".join(parts)
            + "</g>"
        )
    for s in result.scenarios:
        if s.recovered_at is not None:
            rx = x(s.recovered_at)
            out.append(
                f'<g class="recovery-marker" data-scenario="{_e(s.name)}">'
                f'<line x1="{rx:.1f}" x2="{rx:.1f}" y1="{top}" y2="{top + ph}" '
                f'stroke="#1f7a45" stroke-width="2"/>'
                f'<polygon points="{rx - 5:.1f},{top} {rx + 5:.1f},{top} {rx:.1f},{top + 7}" '
                f'fill="#1f7a45"/><title>{_e(s.name)} recovered '
                f"{(s.recovery or 0):.1f} s after the fault</title></g>"
            )
    out.append(
        f'<text x="{left}" y="{height - 2}">requests per second by outcome; '
        "shaded: fault injected; green line: first success after the fault</text></svg>"
    )
    return "".join(out)


def _legend() -> str:
    items = "".join(
        f'<span><i style="background:{c}"></i>{_e(lbl)}</span>' for _, lbl, c, _ in _GROUPS
    )
    return (
        f'<div class="legend">{items}<span><i style="background:#d64545;opacity:.25"></i>'
        'fault window</span><span><i style="background:#1f7a45"></i>recovered</span></div>'
    )


def _cell(s: ScenarioResult, name: str) -> str:
    c = s.check(name)
    if c is None or c.passed is None:
        detail = c.detail if c else ""
        return f'<td class="na" title="{_e(detail)}">-<span class="detail">{_e(detail)}</span></td>'
    cls, mark = ("ok", "✓") if c.passed else ("bad", "✗")
    return f'<td class="{cls}">{mark}<span class="detail">{_e(c.detail)}</span></td>'


def _scorecard(result: DrillResult) -> str:
    head = "".join(f"<th>{_e(CHECK_TITLES[n])}</th>" for n in _CHECK_ORDER)
    rows = []
    for s in result.scenarios:
        if s.passed:
            verdict = '<span class="badge pass">pass</span>'
        elif s.verdict == "not exercised":
            verdict = '<span class="badge skip">not exercised</span>'
        else:
            verdict = '<span class="badge fail">fail</span>'
        first = "-" if s.first_503 is None else f"{s.first_503:.1f} s"
        note = s.error or (s.not_exercised_detail if s.exercised is False else None)
        err = f'<span class="detail">{_e(note)}</span>' if note else ""
        rows.append(
            f"<tr><td><b>{_e(s.name)}</b>{err}</td><td>{verdict}</td>"
            f"<td>{sum(s.outcomes.values())}</td><td>{first}</td>"
            + "".join(_cell(s, n) for n in _CHECK_ORDER)
            + "</tr>"
        )
    return (
        '<table class="scorecard"><thead><tr><th>scenario</th><th>verdict</th><th>requests</th>'
        f"<th>first 503</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _summary(results: Sequence[DrillResult]) -> str:
    names: list[str] = []
    for r in results:
        for s in r.scenarios:
            if s.name not in names:
                names.append(s.name)
    head = "".join(f"<th>{_e(r.label)}</th>" for r in results)
    rows = []
    for n in names:
        cells = []
        for r in results:
            found = next((x for x in r.scenarios if x.name == n), None)
            if found is None:
                cells.append('<td class="na">-</td>')
            elif found.exercised is False:
                cells.append('<td class="na">not exercised (its fault never fired)</td>')
            else:
                cls = "ok" if found.passed else "bad"
                text = ("✓ pass: " if found.passed else "✗ ") + found.in_words
                cells.append(f'<td class="{cls}">{_e(text)}</td>')
        rows.append(f"<tr><td><b>{_e(n)}</b></td>{''.join(cells)}</tr>")
    return (
        f'<table class="summary"><thead><tr><th>scenario</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _metrics(result: DrillResult) -> str:
    """What the service's own metrics counted in each scenario (when it serves them)."""
    rows = [s for s in result.scenarios if s.metrics is not None]
    if not rows:
        return ""
    head = "".join(f"<th>{_e(t)}</th>" for t in METRIC_COLUMNS.values())
    body = []
    for s in rows:
        assert s.metrics is not None
        cells = s.metrics.cells()
        body.append(
            f"<tr><td><b>{_e(s.name)}</b></td>"
            + "".join(f"<td>{_e(cells[k])}</td>" for k in METRIC_COLUMNS)
            + "</tr>"
        )
    return (
        "<h3>what the service counted (its <code>/metrics</code>, "
        "change over each scenario)</h3>"
        f'<table class="metrics"><thead><tr><th>scenario</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def render_html(results: Sequence[DrillResult], *, title: str = "outlast outage drill") -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="meta">{now} · budget {results[0].budget:g} s per request</div>'
        if results
        else "",
    ]
    if len(results) > 1:
        parts.append(_summary(results))
    for r in results:
        if r.passed:
            badge = '<span class="badge pass">PASS</span>'
        elif r.not_exercised_only:
            badge = '<span class="badge skip">NOT A PASS: some scenarios not exercised</span>'
        else:
            badge = '<span class="badge fail">FAIL</span>'

        parts.append(f'<section class="service"><h2>{_e(r.label)} {badge}</h2>')
        lg = r.ledger
        meta = f"{_e(r.url)} · {len(r.records)} requests in {r.duration:.0f} s"
        if lg is not None:
            meta += (
                f" · writes: {lg.acknowledged} acknowledged, {lg.failed} failed, "
                f"{lg.unknown} unknown ({lg.unknown_present} present), "
                f"{len(lg.lost)} lost, {len(lg.duplicated)} doubled"
            )
        if r.error:
            meta += f" · error: {_e(r.error)}"
        parts.append(f'<div class="meta">{meta}</div>')
        parts.append(_chart(r))
        parts.append(_legend())
        parts.append(_scorecard(r))
        parts.append(_metrics(r))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str, results: Sequence[DrillResult], **kw: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(results, **kw))
