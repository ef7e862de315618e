"""The HTML report renders in a real headless Chromium, offline."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
