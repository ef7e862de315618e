"""The shipped Prometheus alert rules: valid, tested on synthetic series, and in step with
the metrics outlast actually produces.

``promtool`` comes from Debian's ``prometheus`` package (``scripts/ensure-prometheus``
installs it); the promtool tests skip with a reason where it cannot be installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from repl_kit import sql, switch_wal

from outlast.replication import (
    METRICS,
    SlotMonitor,
    Thresholds,
    alert_rules,
    alert_rules_file,
    render_prometheus,
    samples,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (scripts/ensure-prometheus installs it)"
)

CDC = 'slot="cdc",slot_type="logical",database="app"'
LABELS = {"slot": "cdc", "slot_type": "logical", "database": "app"}


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def _alert(name: str, at: str, *expected: tuple[dict[str, str], str]) -> dict[str, Any]:
    """One alert_rule_test: each expected alert as (labels, summary)."""
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {"exp_labels": labels, "exp_annotations": {"summary": summary}}
            for labels, summary in expected
        ],
    }


def _cdc(severity: str) -> dict[str, str]:
    return {**LABELS, "severity": severity}


def _rules_test(rule_file: Path) -> dict[str, Any]:
    series = {
        f'outlast_replication_slot_wal_status{{{CDC},status="lost"}}': "0 0 1 1",
        f'outlast_replication_slot_wal_status{{{CDC},status="unreserved"}}': "0 1 0 0",
        f"outlast_replication_slot_verdict{{{CDC}}}": "1x16 2x8",
        'outlast_replication_slot_verdict{slot="gone"}': "_ _ 3 3",
        f"outlast_replication_slot_retained_bytes{{{CDC}}}": "70x12 90x10",
        f"outlast_replication_slot_limit_bytes{{{CDC}}}": "100x30",
        f"outlast_replication_slot_time_to_loss_seconds{{{CDC}}}": "30000 20000x20 3000x10",
        f"outlast_replication_slot_inactive_seconds{{{CDC}}}": "0 600 1200 1800 2400",
        'outlast_replication_check_timestamp_seconds{instance="stuck"}': "0x20",
        'outlast_replication_check_timestamp_seconds{instance="fresh"}': "0+60x20",
    }
    gone = {"slot": "gone", "severity": "critical"}
    tests = [
        # wal_status lost at 2m (the verdict agrees: one alert, not two); a watched
        # slot that is missing is lost too.
        _alert("OutlastReplicationSlotLost", "1m"),
        _alert(
            "OutlastReplicationSlotLost",
            "2m",
            (_cdc("critical"), "Replication slot cdc is lost"),
            (gone, "Replication slot gone is lost"),
        ),
        _alert("OutlastReplicationSlotUnreserved", "0m"),
        _alert(
            "OutlastReplicationSlotUnreserved",
            "1m",
            (_cdc("critical"), "Replication slot cdc will be lost at the next checkpoint"),
        ),
        # 70 % of the limit: warning once it lasted 10 minutes; 90 %: critical after 5.
        _alert("OutlastReplicationSlotRetainedWalHigh", "9m"),
        _alert(
            "OutlastReplicationSlotRetainedWalHigh",
            "10m",
            (_cdc("warning"), "Slot cdc retains 70% of its WAL limit"),
        ),
        _alert("OutlastReplicationSlotRetainedWalCritical", "12m"),
        _alert(
            "OutlastReplicationSlotRetainedWalCritical",
            "18m",
            (_cdc("critical"), "Slot cdc retains 90% of its WAL limit"),
        ),
        # Time to loss: under 6 h from 1m (a warning after 15m), under 1 h from 22m.
        _alert("OutlastReplicationSlotTimeToLoss", "15m"),
        _alert(
            "OutlastReplicationSlotTimeToLoss",
            "16m",
            (_cdc("warning"), "Slot cdc will be lost in 5h 33m 20s"),
        ),
        _alert("OutlastReplicationSlotTimeToLossShort", "26m"),
        _alert(
            "OutlastReplicationSlotTimeToLossShort",
            "27m",
            (_cdc("critical"), "Slot cdc will be lost in 50m 0s"),
        ),
        # No consumer for more than 30 minutes.
        _alert("OutlastReplicationSlotInactive", "3m"),
        _alert(
            "OutlastReplicationSlotInactive",
            "4m",
            (_cdc("warning"), "Slot cdc has had no consumer for 40m 0s"),
        ),
        # A check timestamp that stopped moving; the fresh one never alerts.
        _alert("OutlastReplicationChecksStale", "10m"),
        _alert(
            "OutlastReplicationChecksStale",
            "11m",
            (
                {"instance": "stuck", "severity": "warning"},
                "Replication slots have not been checked for 11m 0s",
            ),
        ),
        # The monitor's own verdict: warn for 15 minutes, critical for 5.
        _alert("OutlastReplicationSlotWarning", "14m"),
        _alert(
            "OutlastReplicationSlotWarning", "15m", (_cdc("warning"), "Slot cdc needs attention")
        ),
        _alert("OutlastReplicationSlotCritical", "21m"),  # critical from 17m
        _alert("OutlastReplicationSlotCritical", "22m", (_cdc("critical"), "Slot cdc is critical")),
    ]
    return {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "alert_rule_test": tests,
            }
        ],
    }


def _without_descriptions(text: str) -> str:
    # promtool compares every annotation; the tests check the summaries, which
    # carry the templated values (descriptions are template-checked by check rules).
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["annotations"].pop("description", None)
    return yaml.safe_dump(doc)


def test_alert_rules_ship_with_the_package() -> None:
    text = alert_rules()
    assert text.startswith("# Prometheus alert rules")
    with resources.as_file(alert_rules_file()) as path:
        assert path.read_text() == text


def test_every_metric_in_the_rules_is_one_outlast_produces() -> None:
    referenced = set(re.findall(r"\boutlast_replication_[a-z_]+\b", alert_rules()))
    assert referenced, "no metric found in the rules"
    assert referenced <= set(METRICS), referenced - set(METRICS)


def test_real_report_exports_every_metric_the_rules_need(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    with SlotMonitor(
        repl_db.dsn(), slots=["cdc", "gone"], thresholds=Thresholds(wal_budget="1GB")
    ) as monitor:
        monitor.check()
        switch_wal(repl_db.dsn())
        report = monitor.check()
    produced = {s.name for s in samples(report)}
    referenced = set(re.findall(r"\boutlast_replication_[a-z_]+\b", alert_rules()))
    assert referenced <= produced, referenced - produced
    text = render_prometheus(report)
    assert 'outlast_replication_slot_present{slot="gone",slot_type="",database=""} 0' in text
    assert (
        f"outlast_replication_slot_limit_bytes{{{CDC.replace('app', repl_db.name)}}} " + str(2**30)
        in text
    )


@needs_promtool
def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "outlast-replication.yml"
    rules.write_text(alert_rules())
    result = _promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


@needs_promtool
def test_promtool_alert_tests_on_synthetic_series(tmp_path: Path) -> None:
    rules = tmp_path / "outlast-replication.yml"
    rules.write_text(_without_descriptions(alert_rules()))
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump(_rules_test(rules), sort_keys=False))
    result = _promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr + tests.read_text()


@needs_promtool
def test_promtool_accepts_the_exposition_of_a_real_report(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    with SlotMonitor(repl_db.dsn(), slots=["cdc", "gone"]) as monitor:
        text = render_prometheus(monitor.check())
    result = _promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
