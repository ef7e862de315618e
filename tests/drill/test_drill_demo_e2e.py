"""`outlast demo` end to end: the contrast between the two services is the point."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from outlast.demo._demo import DEMO_SCENARIOS

# The promise for the main job on a 2-core machine.
DEMO_TIME_LIMIT = 180.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_demo_outlast_passes_and_plain_service_fails(tmp_path):
    """The README's first command, as it runs by default (all its scenarios)."""
    report = tmp_path / "outlast-report.html"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "outlast", "demo", "--json", "--report", str(report)],
        check=False,
        capture_output=True,
        text=True,
        timeout=540,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    print(f"outlast demo: {elapsed:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert elapsed < DEMO_TIME_LIMIT
    results = {r["label"]: r for r in json.loads(proc.stdout)}
    good, plain = results["with outlast"], results["without outlast"]
    assert good["passed"], json.dumps(good, indent=1)[:4000]
    assert good["writes"]["lost"] == 0 and good["writes"]["duplicated"] == 0
    assert good["writes"]["acknowledged"] > 0
    assert not plain["passed"]
    ran = {s["name"] for s in good["scenarios"]}
    assert ran == set(DEMO_SCENARIOS.split(",")) and "restart" in ran

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
    assert "settled" in failed(plain, "commit_lost")  # 500s for writes that were applied
    assert writes(plain, "commit_lost")["unknown_present"] > 0

    # A real PostgreSQL restart (the demo runs one server per service).
    [restart] = [x for x in good["scenarios"] if x["name"] == "restart"]
    assert restart["passed"] and restart["fault_windows"][0]["fault"] == "restart"
    assert restart["recovery_seconds"] is not None
    assert report.read_text().count('<svg class="timeline"') == 2
