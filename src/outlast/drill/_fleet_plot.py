"""The fleet drill's plot: login attempts per second, with and without outlast, as SVG.

A small hand-written renderer (the drill has no plotting dependency): two
panels on one time axis, the fault windows shaded and named. The top panel is
the login attempts per second of each fleet; the bottom one, the fleet's
sessions on the server against its ``max_connections``, with a mark for every
second in which the server refused one of the fleet's logins with 53300.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from outlast.drill._fleet_model import POOL_PER_WORKER, FleetResult, FleetSide

__all__ = ["fleet_svg", "nice_ceiling"]

Scale = Callable[[float], float]

_W, _LEFT, _RIGHT = 860, 56, 16
_TOP_H, _BOTTOM_H, _GAP, _HEAD, _FOOT = 190, 110, 34, 58, 34
_COLORS = {True: "#1a7f37", False: "#cf222e"}
_FONT = "font-family='system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif'"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is >= `value` (at least 1)."""
    if value <= 1:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)  # pragma: no cover - the loop always returns


def _fine_ceiling(value: float) -> float:
    """The smallest of 1, 1.5, 2, 3, 4, 5, 6, 8 times a power of ten that is >= `value`."""
    if value <= 1:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 3, 4, 5, 6, 8, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)  # pragma: no cover - the loop always returns


def _ticks(vmax: float) -> int:
    """How many steps to divide 0..`vmax` into so that every label is a round number."""
    for n in (5, 4, 6, 3):
        step = vmax / n
        mantissa = step / 10 ** math.floor(math.log10(step))
        if any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5)):
            return n
    return 4


def _polyline(points: Sequence[tuple[float, float]], color: str, width: float = 1.8) -> str:
    if not points:
        return ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (
        f"<polyline fill='none' stroke='{color}' stroke-width='{width}' "
        f"stroke-linejoin='round' points='{coords}'/>"
    )


def _steps(values: Sequence[float | None], fx: Scale, fy: Scale) -> list[tuple[float, float]]:
    """A step line: each second's value held across that second (a gap holds the last)."""
    points: list[tuple[float, float]] = []
    last = 0.0
    for i, v in enumerate(values):
        value = last if v is None else float(v)
        points += [(fx(i), fy(value)), (fx(i + 1), fy(value))]
        last = value
    return points


def fleet_svg(result: FleetResult, *, title: str | None = None) -> str:
    """The plot of `result` as a standalone SVG document."""
    cfg = result.config
    sides = result.sides
    length = max((len(s.seconds) for s in sides), default=1) or 1
    plot_w = _W - _LEFT - _RIGHT
    height = _HEAD + _TOP_H + _GAP + _BOTTOM_H + _FOOT

    def x(t: float) -> float:
        return _LEFT + plot_w * min(max(t, 0.0), length) / length

    top_max = nice_ceiling(max((s.attempts for side in sides for s in side.seconds), default=1))
    held = [s.server_connections or 0 for side in sides for s in side.seconds]
    bottom_max = _fine_ceiling(max([cfg.server_limit, *held]) * 1.1)
    top_y0 = _HEAD + _TOP_H
    bottom_y0 = _HEAD + _TOP_H + _GAP + _BOTTOM_H

    def y_top(v: float) -> float:
        return top_y0 - _TOP_H * v / top_max

    def y_bottom(v: float) -> float:
        return bottom_y0 - _BOTTOM_H * v / bottom_max

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {_W} {height}' "
        f"width='{_W}' height='{height}' {_FONT} font-size='12'>",
        f"<rect width='{_W}' height='{height}' fill='#ffffff'/>",
        f"<text x='{_LEFT}' y='22' font-size='15' font-weight='600'>"
        + escape(
            title
            or f"Fleet drill: {cfg.shape} workers ({cfg.size}), max_connections="
            f"{cfg.server_limit}, pools up to {cfg.size * POOL_PER_WORKER}"
        )
        + "</text>",
    ]
    # Legend.
    lx = _LEFT
    for side in sides:
        color = _COLORS[side.enabled]
        out.append(
            f"<line x1='{lx}' y1='40' x2='{lx + 22}' y2='40' stroke='{color}' stroke-width='3'/>"
            f"<text x='{lx + 28}' y='44'>{escape(side.label)}</text>"
        )
        lx += 170
    out.append(f"<text x='{lx}' y='44' fill='#57606a'>shaded: database unavailable</text>")
    if any(name == "down" for name, _, _ in result.windows):
        out.append(
            f"<text x='{_LEFT}' y='{height - 8}' font-size='10' fill='#57606a'>"
            "during 'down' the port is closed: attempts are refused unseen</text>"
        )
    # Fault windows, across both panels.
    for name, start, end in result.windows:
        x0, x1 = x(start), max(x(end), x(start) + 2)
        out.append(
            f"<rect x='{x0:.1f}' y='{_HEAD}' width='{x1 - x0:.1f}' "
            f"height='{bottom_y0 - _HEAD}' fill='#d0d7de' fill-opacity='0.45'/>"
            f"<text x='{x0 + 3:.1f}' y='{_HEAD + 12}' font-size='10' fill='#57606a'>"
            f"{escape(name)}</text>"
        )
    # Axes and grid.
    for y0, h, vmax, label, fy in (
        (top_y0, _TOP_H, top_max, "login attempts / s", y_top),
        (bottom_y0, _BOTTOM_H, bottom_max, "server sessions", y_bottom),
    ):
        out.append(
            f"<line x1='{_LEFT}' y1='{y0}' x2='{_W - _RIGHT}' y2='{y0}' stroke='#8c959f'/>"
            f"<text x='14' y='{y0 - h / 2:.0f}' transform='rotate(-90 14 {y0 - h / 2:.0f})' "
            f"text-anchor='middle' fill='#57606a'>{label}</text>"
        )
        ticks = _ticks(vmax)
        for k in range(ticks + 1):
            v = vmax * k / ticks
            yy = fy(v)
            out.append(
                f"<line x1='{_LEFT}' y1='{yy:.1f}' x2='{_W - _RIGHT}' y2='{yy:.1f}' "
                f"stroke='#eaeef2'/><text x='{_LEFT - 6}' y='{yy + 4:.1f}' text-anchor='end' "
                f"fill='#57606a'>{v:g}</text>"
            )
    step = nice_ceiling(length / 10)
    t = 0.0
    while t <= length:
        out.append(
            f"<text x='{x(t):.1f}' y='{bottom_y0 + 16}' text-anchor='middle' "
            f"fill='#57606a'>{t:g}</text>"
        )
        t += step
    out.append(
        f"<text x='{_LEFT + plot_w / 2:.0f}' y='{height - 8}' text-anchor='middle' "
        "fill='#57606a'>seconds</text>"
    )
    # The server's limit.
    ly = y_bottom(cfg.server_limit)
    out.append(
        f"<line x1='{_LEFT}' y1='{ly:.1f}' x2='{_W - _RIGHT}' y2='{ly:.1f}' stroke='#6e7781' "
        f"stroke-dasharray='5 4'/><text x='{_W - _RIGHT - 4}' y='{ly - 4:.1f}' "
        f"text-anchor='end' fill='#57606a'>max_connections {cfg.server_limit}</text>"
    )
    for side in sides:
        out.append(_side(side, x, y_top, y_bottom, bottom_y0))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _side(side: FleetSide, fx: Scale, y_top: Scale, y_bottom: Scale, base: float) -> str:
    color = _COLORS[side.enabled]
    attempts = [float(s.attempts) for s in side.seconds]
    held: list[float | None] = [
        None if s.server_connections is None else float(s.server_connections) for s in side.seconds
    ]
    parts = [
        _polyline(_steps(attempts, fx, y_top), color),
        _polyline(_steps(held, fx, y_bottom), color, 1.4),
    ]
    for s in side.seconds:
        if s.server_53300:
            parts.append(
                f"<circle cx='{fx(s.at + 0.5):.1f}' cy='{base - 4}' r='3.5' fill='{color}'>"
                f"<title>{s.server_53300} x 53300 at {s.at} s</title></circle>"
            )
    return "\n".join(p for p in parts if p)
