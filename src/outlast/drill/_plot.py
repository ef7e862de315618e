"""Small SVG line charts for the soak: one panel per resource, in one figure.

Standard library only (no matplotlib): the HTML report inlines the figure and
the README links the same SVG file. Each panel starts its y axis at zero, so a
flat line looks flat and a leak climbs; the first and the last window that the
verdict compares are shaded.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Panel", "figure", "line_chart", "nice_max"]

_FONT = "font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


#: Axis tops whose quarters are round numbers too (0, 150, 300, 450, 600).
_NICE = (1, 1.2, 1.6, 2, 2.4, 3, 4, 6, 8, 10)


def nice_max(value: float) -> float:
    """A round upper bound at or above ``value`` whose quarters are round too."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in _NICE:
        if value <= m * exp * (1 + 1e-9):
            return float(m * exp)
    return float(10 * exp)  # pragma: no cover - the loop ends at 10


def tick_label(value: float) -> str:
    """``600``, ``1,200``, ``0.75``: never ``1e+03``."""
    if abs(value - round(value)) < 1e-9:
        return f"{round(value):,}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Panel:
    """One resource: its samples (time, value or None), how to label it, its verdict."""

    key: str
    title: str
    points: Sequence[tuple[float, float | None]]
    scale: float = 1.0  # values are divided by this for the axis (bytes -> MiB)
    unit: str = ""
    passed: bool | None = None
    note: str = ""


def line_chart(
    panel: Panel,
    *,
    end: float,
    shade: Sequence[tuple[float, float]] = (),
    x: float = 0.0,
    y: float = 0.0,
    width: float = 420.0,
    height: float = 170.0,
) -> str:
    """A ``<g>`` drawing one panel at (x, y)."""
    left, right, top, bottom = 46.0, 10.0, 34.0, 22.0
    pw, ph = width - left - right, height - top - bottom
    values = [v / panel.scale for _, v in panel.points if v is not None]
    ymax = nice_max(max(values, default=0.0) * 1.08)
    end = max(end, 1.0)

    def px(t: float) -> float:
        return x + left + pw * min(max(t, 0.0), end) / end

    def py(v: float) -> float:
        return y + top + ph - ph * v / ymax

    if panel.passed is None:
        colour, mark = "#52606d", "not measured"
    else:
        colour, mark = ("#2f9e5b", "flat") if panel.passed else ("#d64545", "GROWS")
    out = [
        f'<g class="soak-panel" data-resource="{_e(panel.key)}" data-passed="{_e(panel.passed)}">',
        f'<text x="{x + left:.1f}" y="{y + 14:.1f}" style="font-weight:600">{_e(panel.title)}'
        f'<tspan fill="{colour}"> {mark}</tspan></text>',
        f'<text x="{x + left:.1f}" y="{y + 27:.1f}" fill="#52606d">{_e(panel.note)}</text>',
        f'<rect x="{x + left:.1f}" y="{y + top:.1f}" width="{pw:.1f}" height="{ph:.1f}" '
        'fill="#fbfcfd" stroke="#d9e2ec"/>',
    ]
    for t0, t1 in shade:
        out.append(
            f'<rect class="window" x="{px(t0):.1f}" y="{y + top:.1f}" '
            f'width="{max(0.5, px(t1) - px(t0)):.1f}" height="{ph:.1f}" fill="#3b82f6" '
            'fill-opacity="0.08"/>'
        )
    for i in range(5):
        v = ymax * i / 4
        label = tick_label(v)
        out.append(
            f'<line x1="{x + left:.1f}" x2="{x + left + pw:.1f}" y1="{py(v):.1f}" '
            f'y2="{py(v):.1f}" stroke="#eef2f6"/><text x="{x + left - 5:.1f}" '
            f'y="{py(v) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    step = next((s for s in (10, 30, 60, 120, 300, 600, 1800, 3600) if end / s <= 8), 7200)
    t = 0.0
    while t <= end + 1e-9:
        out.append(
            f'<text x="{px(t):.1f}" y="{y + top + ph + 15:.1f}" text-anchor="middle">'
            + (f"{t / 60:g} min" if step >= 60 else f"{t:g} s")
            + "</text>"
        )
        t += step
    # One polyline per run of readings; a gap where a second could not be read.
    runs: list[list[str]] = [[]]
    for t_, v_ in panel.points:
        if v_ is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(f"{px(t_):.1f},{py(v_ / panel.scale):.1f}")
    for pts in runs:
        if pts:
            out.append(
                f'<polyline class="series" fill="none" stroke="#1f6feb" stroke-width="1.3" '
                f'points="{" ".join(pts)}"/>'
            )
    if panel.unit:
        out.append(
            f'<text x="{x + width - right:.1f}" y="{y + 27:.1f}" text-anchor="end" '
            f'fill="#52606d">{_e(panel.unit)}</text>'
        )
    out.append("</g>")
    return "".join(out)


def figure(
    panels: Sequence[Panel],
    *,
    end: float,
    shade: Sequence[tuple[float, float]] = (),
    title: str = "",
    columns: int = 2,
    panel_width: float = 420.0,
    panel_height: float = 170.0,
) -> str:
    """A standalone SVG with the panels in a grid (valid as a file and inline in HTML)."""
    rows = max(1, math.ceil(len(panels) / columns))
    head = 28.0 if title else 0.0
    width = columns * panel_width + 10
    height = rows * panel_height + head + 18
    out = [
        f'<svg class="soak-figure" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{_e(title or "soak")}" style="{_FONT};font-size:11px;fill:#334e68">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
    ]
    if title:
        out.append(f'<text x="10" y="19" style="font-size:14px;font-weight:600">{_e(title)}</text>')
    for i, panel in enumerate(panels):
        col, row = i % columns, i // columns
        out.append(
            line_chart(
                panel,
                end=end,
                shade=shade,
                x=col * panel_width,
                y=head + row * panel_height,
                width=panel_width,
                height=panel_height,
            )
        )
    out.append(
        f'<text x="10" y="{height - 5:.0f}" fill="#52606d">one sample a second; shaded: the '
        "first window after warm-up and the last window, whose medians are compared</text>"
    )
    out.append("</svg>")
    return "".join(out)
