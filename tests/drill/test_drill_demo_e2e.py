"""`outlast demo` end to end: the contrast between the two services is the point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_demo_outlast_passes_and_plain_service_fails(tmp_path):
    report = tmp_path / "outlast-report.html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "outlast",
            "demo",
            "--json",
            "--report",
            str(report),
            "--scenarios",
            "down,blackhole,terminate,neon_endpoint_disabled,commit_lost",
            "--duration",
            "5",
        ],  # fmt: skip
        check=False,
        capture_output=True,
        text=True,
        timeout=540,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    results = {r["label"]: r for r in json.loads(proc.stdout)}
    good, plain = results["with outlast"], results["without outlast"]
    assert good["passed"], json.dumps(good, indent=1)[:4000]
    assert good["writes"]["lost"] == 0 and good["writes"]["duplicated"] == 0
    assert good["writes"]["acknowledged"] > 0
    assert not plain["passed"]

    def failed(result, scenario):
        [s] = [x for x in result["scenarios"] if x["name"] == scenario]
        return {c["name"] for c in s["checks"] if c["passed"] is False}

    assert "no_500" in failed(plain, "down")  # 500s where outlast answers 503
    assert "budget" in failed(plain, "blackhole")  # hangs past the budget
    assert "background" in failed(plain, "down")  # the hand-written loop died

    def writes(result, scenario):
        [s] = [x for x in result["scenarios"] if x["name"] == scenario]
        return s["writes"]

    # Lost COMMIT replies: outlast resolves them (pg_xact_status), so every write
    # is acknowledged and stored once; the plain service cannot tell its clients.
    lost = writes(good, "commit_lost")
    assert lost["acknowledged"] > 0 and lost["unknown"] == 0
    assert lost["duplicated"] == 0 and lost["lost"] == 0
    assert "settled" in failed(plain, "commit_lost")  # writes with an unknown outcome
    assert writes(plain, "commit_lost")["unknown"] > 0
    assert report.read_text().count('<svg class="timeline"') == 2
