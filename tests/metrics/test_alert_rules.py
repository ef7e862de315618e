"""The shipped alert rules load in Prometheus and fire exactly when they should (promtool).

`promtool check rules` validates the file as shipped (templates included);
`promtool test rules` runs each alert against synthetic series, once where it
must fire and once where it must not. promtool compares annotations too, so
the unit tests run on a copy without them (their templates are checked above).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import outlast.prometheus

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (scripts/ensure-prometheus installs it)"
)

J = 'job="svc",instance="a:1"'
P1 = 'db_client_connection_pool_name="p1"'
P2 = 'db_client_connection_pool_name="p2"'
IDLE = 'db_client_connection_state="idle"'

# Each case: alert name, input series, and (eval time, expected label sets) pairs.
CASES: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {
    "OutlastDatabaseDown": (
        f"""
        - series: 'outlast_database_up{{{J},guard="main"}}'
          values: '1 1 0 0 0 0 0 0 0 1'
        - series: 'outlast_database_up{{{J},guard="reports"}}'
          values: '1 1 1 1 1 1 1 1 1 1'
        """,
        [
            ("20s", []),  # down for 0 s
            ("40s", []),  # down for 20 s: not yet
            ("60s", ['severity: critical, job: svc, instance: "a:1", guard: main']),
            ("90s", []),  # back up
        ],
    ),
    "OutlastRecoverySlow": (
        f"""
        - series: 'outlast_breaker_state{{{J},guard="main",state="closed"}}'
          values: '1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
        """,
        [
            ("60s", []),
            ("140s", ['severity: warning, job: svc, instance: "a:1", guard: main']),
        ],
    ),
    "OutlastBreakerFlapping": (
        f"""
        - series: 'outlast_breaker_transitions_total{{{J},guard="main",to="open"}}'
          values: '0 1 2 3 4 5 6 7 8 9 10'
        - series: 'outlast_breaker_transitions_total{{{J},guard="calm",to="open"}}'
          values: '0 0 1 1 1 1 1 1 1 1 1'
        """,
        [("100s", ['severity: warning, job: svc, instance: "a:1", guard: main'])],
    ),
    "OutlastRetryStorm": (
        f"""
        - series: 'outlast_retries_total{{{J},guard="main"}}'
          values: '0+600x12'
        - series: 'outlast_calls_total{{{J},guard="main"}}'
          values: '0+700x12'
        - series: 'outlast_retries_total{{{J},guard="busy"}}'
          values: '0+600x12'
        - series: 'outlast_calls_total{{{J},guard="busy"}}'
          values: '0+60000x12'
        """,
        [
            ("30s", []),
            ("120s", ['severity: warning, job: svc, instance: "a:1", guard: main']),
        ],
    ),
    "OutlastPoolExhausted": (
        f"""
        - series: 'db_client_connection_pending_requests{{{J},{P1}}}'
          values: '0 3 3 3 3 3 3 3 3'
        - series: 'db_client_connection_count{{{J},{P1},{IDLE}}}'
          values: '2 0 0 0 0 0 0 0 0'
        - series: 'db_client_connection_pending_requests{{{J},{P2}}}'
          values: '0 3 3 3 3 3 3 3 3'
        - series: 'db_client_connection_count{{{J},{P2},{IDLE}}}'
          values: '2 1 1 1 1 1 1 1 1'
        """,
        [
            ("30s", []),
            (
                "80s",
                [
                    'severity: warning, job: svc, instance: "a:1",'
                    " db_client_connection_pool_name: p1"
                ],
            ),
        ],
    ),
    "OutlastPoolTimeouts": (
        f"""
        - series: 'db_client_connection_timeouts_total{{{J},{P1}}}'
          values: '0 0 0 2 2 2'
        """,
        [
            ("20s", []),
            (
                "40s",
                [
                    'severity: warning, job: svc, instance: "a:1",'
                    " db_client_connection_pool_name: p1"
                ],
            ),
        ],
    ),
    "OutlastTaskDead": (
        f"""
        - series: 'outlast_task_state{{{J},supervisor="app",task="mailer",state="failed"}}'
          values: '0 0 1 1'
        """,
        [
            ("10s", []),
            (
                "20s",
                ['severity: critical, job: svc, instance: "a:1", supervisor: app, task: mailer'],
            ),
        ],
    ),
    "OutlastTaskStalled": (
        f"""
        - series: 'outlast_task_state{{{J},supervisor="app",task="sync",state="stalled"}}'
          values: '0 1 1 1 1 1 1 1 1 0'
        """,
        [
            ("30s", []),
            ("80s", ['severity: warning, job: svc, instance: "a:1", supervisor: app, task: sync']),
            ("100s", []),
        ],
    ),
    "OutlastCommitOutcomeUnknown": (
        f"""
        - series: 'outlast_commit_outcomes_total{{{J},guard="main",outcome="unknown"}}'
          values: '0 0 0 1 1 1'
        - series: 'outlast_commit_outcomes_total{{{J},guard="main",outcome="committed"}}'
          values: '0 5 9 12 20 30'
        """,
        [
            ("20s", []),
            ("40s", ['severity: critical, job: svc, instance: "a:1", guard: main']),
        ],
    ),
}


def _without_annotations(rules: str) -> str:
    out, skipping, depth = [], False, 0
    for line in rules.splitlines():
        indent = len(line) - len(line.lstrip())
        if skipping and line.strip() and indent <= depth:
            skipping = False
        if line.strip() == "annotations:":
            skipping, depth = True, indent
            continue
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def _unit_tests(rules_file: Path) -> str:
    lines = [f"rule_files: [{rules_file}]", "evaluation_interval: 10s", "tests:"]
    for alert, (series, evals) in CASES.items():
        lines += ["  - interval: 10s", "    input_series:"]
        lines += textwrap.indent(textwrap.dedent(series).strip(), "      ").splitlines()
        lines.append("    alert_rule_test:")
        for at, expected in evals:
            lines += [f"      - eval_time: {at}", f"        alertname: {alert}"]
            if not expected:
                lines.append("        exp_alerts: []")
                continue
            lines.append("        exp_alerts:")
            lines += [f"          - exp_labels: {{{labels}}}" for labels in expected]
    return "\n".join(lines) + "\n"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_the_shipped_rules_load(tmp_path: Path) -> None:
    rules = tmp_path / "outlast-rules.yml"
    rules.write_text(outlast.prometheus.rules())
    out = _promtool("check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(CASES)} rules found" in out.stdout


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(_without_annotations(outlast.prometheus.rules()))
    tests = tmp_path / "rules_test.yml"
    tests.write_text(_unit_tests(rules))
    out = _promtool("test", "rules", str(tests))
    assert out.returncode == 0, out.stdout + out.stderr + tests.read_text()


def test_the_cli_prints_the_same_rules() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "outlast", "alerts", "--prometheus"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == outlast.prometheus.rules()
    assert set(CASES) == {
        line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if "- alert:" in line
    }
