"""The HTML report renders in a real headless Chromium, offline."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest
from drill_kit import FakeInjector, FakeService

from outlast.drill import DrillConfig, Route, builtin, run_drill, write_report

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1400,1000",
            *args,
        ],  # fmt: skip
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp)},
    )


def _png_pixels(data: bytes) -> Counter[tuple[int, int, int]]:
    """Count the RGB colours of an 8-bit, non-interlaced RGB(A) PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride, prev = zlib.decompress(idat), width * channels, bytearray(width * channels)
    counts: Counter[tuple[int, int, int]] = Counter()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        counts.update((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        prev = line
    return counts


def _near(counts: Counter[tuple[int, int, int]], rgb: tuple[int, int, int], tol: int = 6) -> int:
    return sum(n for c, n in counts.items() if all(abs(c[i] - rgb[i]) <= tol for i in range(3)))


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/ensure-chromium installs it)"
)
async def test_drill_report_renders_chart_and_scorecard_in_headless_chromium(tmp_path):
    scenarios = [
        builtin("down", duration=1.5, budget=1.0),
        builtin("terminate", duration=1, budget=1),
    ]
    results = []
    for mode, label in (("good", "well-behaved"), ("500", "answers 500")):
        with FakeService(mode) as svc:
            cfg = DrillConfig(
                url=svc.url, scenarios=scenarios, ping=Route("GET", "/api/ping"), budget=1.0,
                margin=0.5, warmup=0.6, settle=0.4, max_recovery=3.0, interval=0.05, label=label,
            )  # fmt: skip
            results.append(await run_drill(cfg, FakeInjector(svc)))
    report = tmp_path / "report.html"
    write_report(str(report), results)
    html = report.read_text()
    assert "http://" not in html.replace(results[0].url, "").replace(results[1].url, "").replace(
        "http://www.w3.org/2000/svg", ""
    )  # nothing fetched from the network

    dom = _chromium(tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    out = dom.stdout
    assert out.count('<svg class="timeline"') == 2
    assert len(re.findall(r'class="fault-window"', out)) >= 4
    assert re.search(r'class="series series-ok"[^>]*>(<rect [^>]+>)+', out)
    assert re.search(r'class="series series-503"[^>]*>(<rect [^>]+>)+', out)
    assert re.search(r'class="series series-5xx"[^>]*>(<rect [^>]+>)+', out)
    assert len(re.findall(r'class="recovery-marker"', out)) >= 3
    assert out.count('<table class="scorecard"') == 2
    assert '<table class="summary"' in out
    summary = out.split('<table class="summary"', 1)[1].split("</table>", 1)[0]
    assert re.search(r"recovered in \d+\.\d s", summary)  # recovery time per scenario

    png = tmp_path / "report.png"
    shot = _chromium(tmp_path, f"--screenshot={png}", report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    pixels = _png_pixels(png.read_bytes())
    # What a reader sees, not just what the DOM holds: the stacked bars of
    # successful and 503 traffic (far more pixels than the legend swatches
    # and badges of the same colours), and the shaded fault windows
    # (#d64545 at 13% over the plot's #fbfcfd).
    assert _near(pixels, (0x2F, 0x9E, 0x5B)) > 3_000, "no 2xx bars in the screenshot"
    assert _near(pixels, (0xE0, 0xA5, 0x26)) > 500, "no 503 bars in the screenshot"
    assert _near(pixels, (246, 228, 229), tol=4) > 3_000, "no shaded fault windows"
