"""The jobs soak, CI size: 8,000 jobs (not the README's 100,000), 200 keys, limit 3,
4 worker processes, a SIGKILL every ~6 s, a proxy outage and a server restart.

Runs ``benchmarks/jobs_soak.py`` (its own private PostgreSQL and chaos proxy) and
asserts on its report: every check there (every job done, per-key limit never
exceeded by the handlers' own intervals, re-runs only after kills, dead
workers' rows cleared within a lease, workers resumed after each outage,
clean SIGTERM) must hold. The full run's command and figures are in the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "jobs_soak.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_small_soak_with_kills_and_two_outages() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            *("--jobs", "8000", "--keys", "200", "--lease", "4", "--kill-every", "6"),
            *("--outage", "2", "--min-ms", "20", "--max-ms", "200", "--timeout", "300"),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert out.stdout, out.stderr[-3000:]
    report = json.loads(out.stdout)
    if report["violations"]:
        pytest.fail(json.dumps(report, indent=1))
    assert out.returncode == 0
    assert report["left_in_queue"] == 0 and report["slots_left"] == 0
    assert report["max_running_per_key"] == 3  # reached, never exceeded
    assert report["kills"] >= 1
    assert [o["kind"] for o in report["outages"]] == ["proxy", "restart"]
    assert report["dedupe_duplicates_accepted"] == 0
